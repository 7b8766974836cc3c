"""Checking views by their layout: a view has no values of its own, only a place in its base.

The recorder keeps no statistics of pure views (they would repeat their base's), but it records
their shape, strides and storage offset.  A view's elements are therefore fully determined by its
input and that layout.  The check runs the view's ONNX nodes on *storage addresses*: an int64
array laid out like the input (``as_strided(arange(n), shape, strides, offset)``).  The result must
equal the addresses the recorded output layout names.  If it does, the ONNX nodes pick exactly the
elements torch's view picked, so the view's values are right whenever its input's are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from replayer.check.compare import Comparison, has_stats
from replayer.check.runtime import RunError, run_ort, run_reference
from replayer.check.stages import Replay
from replayer.export.mapping import OpUnit
from tracefmt.model import TensorMeta
from tracefmt.reader import Step

ADDR_SUFFIX = "@addr"


def _extent(meta: TensorMeta) -> int:
    if meta.strides is None or meta.numel == 0:
        return meta.storage_offset
    return (
        meta.storage_offset + sum((d - 1) * s for d, s in zip(meta.shape, meta.strides, strict=True)) + 1
    )


def addresses(meta: TensorMeta, size: int) -> np.ndarray:
    """The storage index of every element of a tensor laid out as ``meta`` says."""
    if meta.strides is None:
        raise ValueError("addresses() needs a tensor whose strides were recorded.")
    base = np.arange(size, dtype=np.int64)
    if meta.numel == 0:
        return np.zeros(meta.shape, dtype=np.int64)
    view = np.lib.stride_tricks.as_strided(
        base[meta.storage_offset :], shape=meta.shape, strides=[8 * s for s in meta.strides]
    )
    return np.array(view, order="C")


def _eligible(step: Step, unit: OpUnit) -> bool:
    if not unit.layout or len(unit.op.inputs) != 1 or not unit.op.outputs:
        return False
    metas = [step.tensors[t] for t in (*unit.op.inputs, *unit.op.outputs)]
    if any(m.meta.strides is None and m.meta.shape for m in metas):
        return False
    return all(
        not step.tensors[t].has_values and not has_stats(step.tensors[t].stats) for t in unit.op.outputs
    )


def layout_checks(
    step: Step, units: Sequence[OpUnit], names: Sequence[str], replay: Replay
) -> Mapping[int, Comparison]:
    """Address checks of every view op among ``units`` whose outputs have no record."""
    chosen = [u for u in units if u.op.index not in replay.problems and _eligible(step, u)]
    if not chosen:
        return {}
    plans = {u.op.index: _plan(step, u, names) for u in chosen}
    results: dict[int, Comparison] = {}
    try:
        merged = _run([p for p in plans.values()])
        for index, plan in plans.items():
            results[index] = _judge(plan, merged)
    except RunError:
        for index, plan in plans.items():
            try:
                results[index] = _judge(plan, _run([plan]))
            except RunError as e:
                results[index] = Comparison(False, "layout", detail=f"could not run: {e}")
    return results


_Plan = tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, np.ndarray], dict[str, np.ndarray]]


def _plan(step: Step, unit: OpUnit, names: Sequence[str]) -> _Plan:
    t_in = unit.op.inputs[0]
    metas = [step.tensors[t].meta for t in (t_in, *unit.op.outputs)]
    size = max(_extent(m) for m in metas)
    source = names[t_in]
    fed = f"{source}{ADDR_SUFFIX}{unit.op.index}"
    nodes = []
    for node in unit.nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for k, name in enumerate(copy.input):
            if name == source:
                copy.input[k] = fed
        nodes.append(copy)
    expected = {names[t]: addresses(step.tensors[t].meta, size) for t in unit.op.outputs}
    return nodes, list(unit.initializers), {fed: addresses(metas[0], size)}, expected


def _run(plans: Sequence[_Plan]) -> dict[str, np.ndarray]:
    nodes = [n for p in plans for n in p[0]]
    inits = [i for p in plans for i in p[1]]
    feeds = {k: v for p in plans for k, v in p[2].items()}
    outputs = [k for p in plans for k in p[3]]
    try:
        return run_ort(nodes, inits, feeds, outputs)
    except RunError:
        return run_reference(nodes, inits, feeds, outputs, {})


def _judge(plan: _Plan, results: Mapping[str, np.ndarray]) -> Comparison:
    for name, want in plan[3].items():
        got = results.get(name)
        if got is None or tuple(got.shape) != tuple(want.shape):
            return Comparison(
                False,
                "layout",
                detail=f"{name}: shape "
                f"{None if got is None else tuple(got.shape)} replayed, "
                f"{tuple(want.shape)} recorded",
            )
        if not np.array_equal(got, want):
            return Comparison(
                False,
                "layout",
                detail=f"{name}: {int((got != want).sum())} "
                "elements address other storage than the recorded view",
            )
    return Comparison(True, "layout", 0.0, 0.0)
