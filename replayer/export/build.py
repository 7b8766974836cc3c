"""Export one recorded step as an ONNX model: what ran, op by op, for Netron and ONNX Runtime.

Each recorded tensor becomes one ONNX value (named by its parameter name where it has one, else
``t<index>``; a later version of a named tensor is ``name@v<version>``) with its shape and dtype in
``value_info``; each op becomes the nodes :mod:`replayer.export.mapping` maps it to (standard ONNX, or
one node in the custom domain ``ai.tracefmt.aten``).  Tensors that enter the selection from outside
become initializers (when their values were recorded) or graph inputs; tensors the selection
produces and nothing in it reads become graph outputs.  ``depth`` folds modules below that depth
into ``ai.tracefmt.Module`` nodes (:mod:`replayer.export.modules`).  How is one
:class:`ExportOptions`; every entry point takes it (``export_step`` as keywords).

Example::

    with tracefmt.open("runs/demo") as trace:
        model, stats = export_step(trace, step=3, phase="forward", depth=2)
    save_model(model, "step3.onnx")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import onnx
from onnx import helper, numpy_helper

from replayer.errors import ReplayError
from replayer.export.custom import ATEN_DOMAIN, DOMAIN_VERSION, MODULE_DOMAIN
from replayer.export.mapping import MappedStep, Progress, load_selection, map_step
from replayer.export.onnx_types import onnx_type
from tracefmt.model import OpNode, Phase, TensorRecord
from tracefmt.reader import Step, Trace

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "IR_VERSION",
    "OPSET",
    "ExportKeywords",
    "ExportOptions",
    "ExportStats",
    "ModelLabels",
    "build_model",
    "export_ops",
    "export_step",
    "save_model",
]

OPSET = 21
IR_VERSION = 10
#: Above this many bytes of initializers the model must keep them in an external data file.
EXTERNAL_LIMIT = 2**31 - 2**26


@dataclass(frozen=True)
class ExportOptions:
    """How a selection of ops becomes a model: the one place the export's defaults are.

    * ``with_values``: recorded values become initializers (else graph inputs: shapes only).
    * ``depth``: fold modules below this depth into ``ai.tracefmt.Module`` nodes (``None``: flat).
    * ``split_saved``: draw tensors that backward or optimizer ops read from the forward pass as
      separate graph inputs (``name:saved``) instead of long edges: Netron lays such graphs out
      in seconds instead of minutes.
    * ``external_data``: a file for initializers of at least ``external_threshold`` bytes (when
      no threshold is given: all of them, once they pass :data:`EXTERNAL_LIMIT` together; a step
      that large without a file must be exported without values).
    """

    with_values: bool = True
    depth: int | None = None
    split_saved: bool = False
    external_data: str | os.PathLike[str] | None = None
    external_threshold: int | None = None

    def __post_init__(self) -> None:
        for name in ("with_values", "split_saved"):
            flag = getattr(self, name)
            if not isinstance(flag, bool):
                raise ReplayError(f"Export option {name!r} must be True or False, got {flag!r}.")
        for name in ("depth", "external_threshold"):
            count = getattr(self, name)
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 0
            ):
                raise ReplayError(
                    f"Export option {name!r} must be None or an int of at least 0, got {count!r}."
                )
        if self.external_data is not None and not isinstance(self.external_data, str | os.PathLike):
            raise ReplayError(
                f"Export option 'external_data' must be a file path, got {self.external_data!r}."
            )


class ExportKeywords(TypedDict, total=False):
    """The fields of :class:`ExportOptions` as :func:`export_step`'s keywords (defaults there)."""

    with_values: bool
    depth: int | None
    split_saved: bool
    external_data: str | os.PathLike[str] | None
    external_threshold: int | None


@dataclass(frozen=True)
class ModelLabels:
    """What a model says about where it came from: its graph's name and extra metadata props."""

    graph_name: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, trace: Trace, step: Step, phase: str) -> ModelLabels:
        """The labels of ``phase`` of ``step`` (loaded from ``trace``): run id and provenance."""
        return cls(
            f"step {step.step} rank {step.rank} {phase}",
            {
                "tracefmt.run_id": trace.run_id,
                "tracefmt.phase": phase,
                "tracefmt.provenance": trace.provenance.to_json(),
            },
        )


@dataclass(frozen=True)
class ExportStats:
    """What an export did: ops mapped to standard ONNX, ops left as custom nodes (by name)."""

    ops: int
    standard: int
    custom: dict[str, int]
    nodes: int = 0
    modules: int = 0
    external: str | None = None

    @classmethod
    def of(cls, mapped: MappedStep, nodes: int, modules: int, external: str | None) -> ExportStats:
        custom: dict[str, int] = {}
        for unit in mapped.units:
            if not unit.standard:
                custom[unit.op.name] = custom.get(unit.op.name, 0) + 1
        n_ops = len(mapped.units)
        return cls(n_ops, n_ops - sum(custom.values()), custom, nodes, modules, external)


def _value_info(rec: TensorRecord, name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx_type(rec.dtype), list(rec.shape))


def _initializer(rec: TensorRecord, name: str, external: _External | None) -> onnx.TensorProto:
    array = rec.values()
    if external is not None and array.nbytes >= external.threshold:
        return external.write(array, name, onnx_type(rec.dtype))
    return numpy_helper.from_array(array, name)


class _External:
    """Writes large initializers to one external data file next to the model."""

    def __init__(self, path: Path, threshold: int) -> None:
        self.path = path
        self.threshold = threshold
        self._offset = 0
        self._file = path.open("wb")

    def write(self, array: object, name: str, elem_type: int) -> onnx.TensorProto:
        import numpy as np

        data = np.asarray(array, order="C")
        tensor = onnx.TensorProto(name=name, data_type=elem_type, dims=list(data.shape))
        pad = (-self._offset) % 4096
        self._file.write(b"\0" * pad)
        self._offset += pad
        raw = data.view(np.uint8).reshape(-1)
        self._file.write(raw.tobytes())
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", self.path.name),
            ("offset", str(self._offset)),
            ("length", str(raw.size)),
        ):
            tensor.external_data.add(key=key, value=value)
        self._offset += raw.size
        return tensor

    def close(self) -> None:
        self._file.close()


@dataclass
class _Wiring:
    """How a selection's values connect: its nodes, what it reads from outside, what it makes."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    #: The mappers' own constants.
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    #: Values read before anything in the selection made them (ordered, first read first).
    outside: dict[int, None] = field(default_factory=dict)
    #: Recorded draws and other values the mappers read by a name of their own.
    recorded: list[tuple[str, int]] = field(default_factory=list)
    #: Forward values read by later phases, drawn as ``name:saved`` inputs (``split_saved``).
    saved: dict[int, None] = field(default_factory=dict)
    produced: set[int] = field(default_factory=set)
    consumed: set[int] = field(default_factory=set)


def _wire(mapped: MappedStep, split_saved: bool) -> _Wiring:
    names = mapped.names
    wiring = _Wiring()
    forward_made: set[int] = set()
    for unit in mapped.units:
        op: OpNode = unit.op
        renames: dict[str, str] = {}
        for t in op.inputs:
            wiring.consumed.add(t)
            if t not in wiring.produced:
                wiring.outside.setdefault(t)
            elif split_saved and t in forward_made and op.phase is not Phase.FORWARD:
                wiring.saved.setdefault(t)
                renames[names[t]] = names[t] + ":saved"
        for node in unit.nodes:
            if renames:
                for i, name in enumerate(node.input):
                    if name in renames:
                        node.input[i] = renames[name]
            wiring.nodes.append(node)
        wiring.initializers.extend(unit.initializers)
        wiring.recorded.extend(unit.recorded_inputs)
        wiring.produced.update(op.outputs)
        if op.phase is Phase.FORWARD:
            forward_made.update(op.outputs)
    return wiring


def _external_file(
    tensors: Sequence[TensorRecord], wiring: _Wiring, options: ExportOptions
) -> _External | None:
    """The external data file the values need, or ``None`` when they fit in the model."""
    if not options.with_values:
        return None
    sources = list(wiring.outside) + [t for _, t in wiring.recorded]
    total = _source_bytes(tensors, sources)
    threshold = options.external_threshold
    if threshold is None:
        threshold = 1024 if total > EXTERNAL_LIMIT else None
    if threshold is None:
        return None
    if options.external_data is None:
        raise ReplayError(
            f"The step's recorded values take {total} bytes, more than an "
            "ONNX file can hold; give an output path (external data) or "
            "export without values."
        )
    return _External(Path(options.external_data), threshold)


def _sources(
    mapped: MappedStep, wiring: _Wiring, options: ExportOptions
) -> tuple[list[onnx.ValueInfoProto], list[onnx.TensorProto], str | None]:
    """The graph inputs and initializers of the values the selection reads from outside, and the
    external data file written, if any."""
    tensors, names = mapped.step.tensors, mapped.names
    graph_inputs: list[onnx.ValueInfoProto] = []
    initializers = list(wiring.initializers)
    external = _external_file(tensors, wiring, options)
    try:
        named = [(names[t], t) for t in wiring.outside] + wiring.recorded
        for name, t in named:
            rec = tensors[t]
            if options.with_values and rec.has_values:
                initializers.append(_initializer(rec, name, external))
            else:
                graph_inputs.append(_value_info(rec, name))
    finally:
        if external is not None:
            external.close()
    graph_inputs.extend(_value_info(tensors[t], names[t] + ":saved") for t in wiring.saved)
    return graph_inputs, initializers, None if external is None else str(external.path)


def build_model(
    mapped: MappedStep, options: ExportOptions, labels: ModelLabels | None = None
) -> tuple[onnx.ModelProto, ExportStats]:
    """The ONNX model of a mapped selection (see the module docstring)."""
    step, names = mapped.step, mapped.names
    tensors = step.tensors
    wiring = _wire(mapped, options.split_saved)
    nodes = wiring.nodes
    graph_inputs, initializers, external = _sources(mapped, wiring, options)
    made = sorted(wiring.produced)
    outputs = [_value_info(tensors[t], names[t]) for t in made if t not in wiring.consumed]
    value_info = {names[t]: _value_info(tensors[t], names[t]) for t in made if t in wiring.consumed}
    modules = 0
    if options.depth is not None:
        from replayer.export.modules import collapse

        types = {**value_info, **{v.name: v for v in graph_inputs + outputs}}
        for init in initializers:
            types.setdefault(
                init.name, helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
        nodes, initializers, modules = collapse(
            mapped.units, tensors, initializers, types, options.depth, {o.name for o in outputs}
        )
        visible = {o for n in nodes for o in n.output}
        value_info = {k: v for k, v in value_info.items() if k in visible}
    labels = labels or ModelLabels()
    graph = helper.make_graph(
        nodes,
        labels.graph_name or f"step_{step.step}",
        graph_inputs,
        outputs,
        initializer=initializers,
        value_info=list(value_info.values()),
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(ATEN_DOMAIN, DOMAIN_VERSION)]
    if modules:
        opsets.append(helper.make_opsetid(MODULE_DOMAIN, DOMAIN_VERSION))
    model = helper.make_model(
        graph, producer_name="tracefmt-replayer", ir_version=IR_VERSION, opset_imports=opsets
    )
    helper.set_model_props(
        model, {"tracefmt.step": str(step.step), "tracefmt.rank": str(step.rank), **labels.metadata}
    )
    return model, ExportStats.of(mapped, len(nodes), modules, external)


def _source_bytes(tensors: Sequence[TensorRecord], sources: Sequence[int]) -> int:
    from tracefmt.dtypes import DTYPE_INFO

    return sum(
        tensors[t].meta.numel * DTYPE_INFO[tensors[t].dtype].itemsize
        for t in sources
        if tensors[t].has_values
    )


def export_ops(
    step: Step,
    ops: Sequence[OpNode],
    options: ExportOptions | None = None,
    *,
    labels: ModelLabels | None = None,
    progress: Progress | None = None,
) -> tuple[onnx.ModelProto, ExportStats]:
    """Build the ONNX model of ``ops`` (a selection of ``step``'s ops, in execution order)."""
    return build_model(map_step(step, ops, progress), options or ExportOptions(), labels)


def export_step(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "all",
    module: str | None = None,
    progress: Progress | None = None,
    **options: Unpack[ExportKeywords],
) -> tuple[onnx.ModelProto, ExportStats]:
    """Export one recorded step of ``trace`` (see the module docstring).

    ``rank``, ``phase`` (one of :data:`~replayer.export.mapping.PHASES`) and ``module`` (a glob)
    choose the ops; the other keywords are the fields of :class:`ExportOptions`, where their
    defaults are.
    """
    settings = ExportOptions(**options)
    loaded, ops = load_selection(trace, step, rank, phase, module)
    return export_ops(
        loaded, ops, settings, labels=ModelLabels.of(trace, loaded, phase), progress=progress
    )


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write ``model``; initializers already written as external data stay where they are."""
    Path(path).write_bytes(model.SerializeToString())
