"""Running ONNX nodes: standard ones in ONNX Runtime, custom ones in the ONNX reference evaluator.

Custom ``ai.tracefmt.aten`` nodes run through ``onnx.reference.ReferenceEvaluator`` with one
generated ``OpRun`` class per op type, whose ``_run`` decodes the node's recorded attributes and
calls the op's numpy reference (:mod:`replayer.export.ops.backward`, :mod:`replayer.export.ops.foreach`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from replayer.export.build import IR_VERSION, OPSET
from replayer.export.custom import ATEN_DOMAIN, DOMAIN_VERSION, decode_custom
from replayer.export.ops import RefArgs, reference_for
from replayer.export.ops.opcontext import numpy_dtype
from tracefmt.model import TensorMeta

#: Marks an output a reference did not compute (a zero-size float array is never a real output
#: of the ops whose references may skip one: the caller checks identity, not contents).
NOT_COMPUTED = np.empty((0,), dtype=np.float64)


class RunError(Exception):
    """A batch of nodes could not be run."""


def _model(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
        for name, a in feeds.items()
    ]
    graph = helper.make_graph(
        list(nodes),
        "replay",
        inputs,
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(
        graph,
        ir_version=IR_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(ATEN_DOMAIN, DOMAIN_VERSION)],
    )


def run_ort(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """Run standard nodes in ONNX Runtime (CPU); raises :class:`RunError`."""
    import onnxruntime as ort

    if not outputs:
        return {}
    model = _model(nodes, initializers, feeds, outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        # IO binding: session.run checks every feed name against a list (quadratic in inputs).
        # The arrays are shared, not copied: no node may write its inputs (see nn._batch_norm).
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.asarray(array, order="C"))
        for name in outputs:
            binding.bind_output(name)
        session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
    except Exception as e:  # onnxruntime raises its own exception types
        raise RunError(f"onnxruntime: {str(e).strip().splitlines()[0][:300]}") from e
    return dict(zip(outputs, (np.asarray(r) for r in results), strict=True))


def _op_class(op_type: str, metas: Mapping[str, TensorMeta], notes: dict[str, float]) -> type:
    from onnx.reference.op_run import OpRun

    def _run(self: Any, *inputs: np.ndarray, **_: Any) -> tuple[np.ndarray, ...]:
        node = self.onnx_node
        name, attrs, pairs, slots = decode_custom(node)
        fn = reference_for(name)
        if fn is None:
            raise NotImplementedError(f"no numpy reference for {name}")
        outs = {slot: metas[out] for slot, out in zip(slots, node.output, strict=False) if out in metas}
        args = RefArgs(name, [np.asarray(x) for x in inputs], pairs, attrs, outs)
        results = list(fn(args))
        # Recorded slots count only the tensors returned: match in order, skipping Nones.
        present = [i for i, r in enumerate(results) if r is not None]
        by_slot = present if len(present) == len(node.output) else list(slots)
        produced = []
        for k, out in enumerate(node.output):
            position = by_slot[k] if k < len(by_slot) else -1
            value = results[position] if 0 <= position < len(results) else None
            meta = metas.get(out)
            notes[f"reduction:{node.name}"] = float(args.reduction)
            if position in args.scales:
                notes[f"scale:{out}"] = args.scales[position]
            if value is None or meta is None:
                produced.append(NOT_COMPUTED)
                continue
            array = np.asarray(value)
            if tuple(array.shape) != meta.shape and array.size == int(np.prod(meta.shape)):
                array = array.reshape(meta.shape)
            produced.append(array.astype(numpy_dtype(meta.dtype)))
        return tuple(produced)

    return type(op_type, (OpRun,), {"op_domain": ATEN_DOMAIN, "_run": _run})


def run_reference(
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str],
    metas: Mapping[str, TensorMeta],
    notes: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Run custom (and standard) nodes in the ONNX reference evaluator; raises RunError.

    ``notes`` receives what the references report: ``reduction:<node>`` and ``scale:<output>``.
    """
    from onnx.reference import ReferenceEvaluator

    if not outputs:
        for node in nodes:  # still run them: a reference may raise on what it cannot do
            if node.domain == ATEN_DOMAIN:
                name = decode_custom(node)[0]
                if reference_for(name) is None:
                    raise RunError(f"no numpy reference for {name}")
        return {}
    model = _model(nodes, initializers, feeds, outputs)
    types = sorted({n.op_type for n in nodes if n.domain == ATEN_DOMAIN})
    sink = notes if notes is not None else {}
    try:
        evaluator = ReferenceEvaluator(model, new_ops=[_op_class(t, metas, sink) for t in types])
        results = evaluator.run(list(outputs), dict(feeds))
    except Exception as e:  # the evaluator wraps errors of the references in TypeError etc.
        cause = e.__cause__ or e
        raise RunError(f"reference: {type(cause).__name__}: {str(cause).strip()[:300]}") from e
    return dict(zip(outputs, (np.asarray(r) for r in results), strict=True))
