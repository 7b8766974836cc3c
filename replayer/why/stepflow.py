"""The data flow of one full step, as ``replayer why`` walks it: views, in-place writes, the
tensors holding NaN/Inf, the path to the loss, and the numbers a :class:`Site` shows.

Pure functions of a loaded :class:`tracefmt.Step`.  The recorder measures no pure view (spec
section 5.7): a view's numbers are its base's, so the walk looks through view ops to the measured
tensor, or to the parameter an in-place op writes through a view (``w.view(-1)[0] = inf`` is a
``copy_`` into a ``select`` of a ``view`` of ``w``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from replayer.diff.core import chain_to, find_loss
from replayer.why.explained import Link, Site, TensorNumbers
from tracefmt.dtypes import DTYPE_INFO
from tracefmt.model import OpNode, Phase, TensorRecord
from tracefmt.nonfinite import STATE_ROLES
from tracefmt.reader import Step

__all__ = [
    "VIEW_OPS",
    "base_op_name",
    "first_reader",
    "first_readers",
    "is_floating",
    "is_inplace",
    "links",
    "nonfinite_tensors",
    "numbers",
    "path_to_loss",
    "site",
    "view_base",
    "written_state",
]

#: aten ops whose output shares its first input's storage (no numbers of their own).
VIEW_OPS = frozenset(
    {
        "alias", "as_strided", "detach", "diagonal", "expand", "narrow", "permute", "reshape",
        "select", "slice", "split", "split_with_sizes", "squeeze", "t", "transpose", "unbind",
        "unflatten", "unfold", "unsqueeze", "view", "view_as", "_unsafe_view", "_reshape_alias",
        "chunk", "flatten", "lift_fresh", "movedim", "swapaxes", "indices", "values",
    }
)  # fmt: skip
#: Steps through views followed at most (a hostile file could chain views without end).
_MAX_VIEW_DEPTH = 64


def base_op_name(name: str) -> str:
    """``aten::copy_.default`` -> ``copy_``."""
    return name.rpartition("::")[2].partition(".")[0]


def is_inplace(name: str) -> bool:
    """An op that writes its first argument (``copy_``, ``fill_``, ``index_put_``, ``add_``)."""
    base = base_op_name(name)
    return base.endswith("_") and not base.endswith("__")


def is_floating(t: TensorRecord) -> bool:
    return DTYPE_INFO[t.meta.dtype].logical.kind not in "biu"


def _measured(t: TensorRecord) -> bool:
    return t.stats is not None and (t.stats.nan is not None or t.stats.norm is not None)


def view_base(step: Step, t: int) -> int:
    """The tensor ``t`` is a view of (through view ops), or ``t`` itself."""
    for _ in range(_MAX_VIEW_DEPTH):
        p = step.tensors[t].meta.producer
        if p is None or not 0 <= p < len(step.ops):
            return t
        op = step.ops[p]
        if base_op_name(op.name) not in VIEW_OPS or not op.inputs:
            return t
        t = op.inputs[0]
    return t


def written_state(step: Step, op: OpNode) -> int | None:
    """The parameter, gradient or optimizer state ``op`` writes: an output of a state role, or
    (an in-place op) the state tensor its first argument is a view of."""
    for t in op.outputs:
        if step.tensors[t].role in STATE_ROLES:
            return t
    if is_inplace(op.name) and op.inputs:
        base = view_base(step, op.inputs[0])
        if step.tensors[base].role in STATE_ROLES:
            return base
    return None


def nonfinite_tensors(step: Step) -> set[int]:
    """Tensors holding NaN/Inf: those counted so, and unmeasured ones made from them."""
    bad = {t.index for t in step.tensors if t.stats is not None and (t.stats.nan or t.stats.inf)}
    for op in step.ops:
        if any(i in bad for i in op.inputs):
            bad.update(o for o in op.outputs if not _measured(step.tensors[o]))
    return bad


def first_readers(step: Step) -> dict[int, int]:
    """Each tensor's first reader: tensor index -> op index (one pass over the ops)."""
    out: dict[int, int] = {}
    for op in step.ops:
        for t in op.inputs:
            out.setdefault(t, op.index)
    return out


def first_reader(
    step: Step, tensors: Iterable[int], after: int = -1, name: str | None = None
) -> int | None:
    """The first op after ``after`` reading one of ``tensors`` (or a tensor named ``name``)."""
    wanted = set(tensors)
    for op in step.ops[after + 1 :]:
        for i in op.inputs:
            if i in wanted or (name is not None and step.tensors[i].meta.name == name):
                return op.index
    return None


def _loss_target(step: Step) -> int | None:
    """The loss tensor, else an output of the last forward op."""
    loss = find_loss(step)
    if loss is not None:
        return loss
    for op in reversed(step.ops):
        if op.phase is Phase.FORWARD and op.outputs:
            return op.outputs[0]
    return None


def path_to_loss(step: Step, starts: Sequence[int], through: set[int]) -> list[int]:
    """Op indices from the first of ``starts`` that reaches the loss along the recorded data
    flow (through the tensors in ``through`` where such a path exists), the loss's op last;
    ``[]`` when none does (the cause is in the backward pass or the optimizer)."""
    loss = _loss_target(step)
    if loss is None:
        return []
    for start in starts:
        if start is None or not 0 <= start < len(step.ops):
            continue
        path, _ = chain_to(step.ops, step.tensors, start, loss, through)
        if path:
            return path
    return []


def links(step: Step, ops: Sequence[int]) -> list[Link]:
    """The path's ops as links; views (no computation of their own) left out but at the ends."""
    kept = [
        k
        for n, k in enumerate(ops)
        if 0 <= k < len(step.ops)
        and (n in (0, len(ops) - 1) or base_op_name(step.ops[k].name) not in VIEW_OPS)
    ]
    return [Link(step.ops[k].module, k, step.ops[k].name, step.ops[k].phase.label) for k in kept]


def _float(x: float | None) -> float | None:
    return None if x is None else float(x)


def numbers(step: Step, t: int) -> TensorNumbers:
    """The recorded numbers of tensor ``t``; an unmeasured view shows its measured base's."""
    rec = step.tensors[t]
    src, via = rec, None
    if not _measured(rec):
        base = step.tensors[view_base(step, t)]
        if base.index != t and _measured(base):
            src, via = base, base.name or f"tensor {base.index}"
    s = src.stats
    return TensorNumbers(
        name=rec.name,
        role=rec.role.label,
        tensor=t,
        shape=tuple(rec.meta.shape),
        dtype=rec.meta.dtype.label,
        min=None if s is None else _float(s.min),
        max=None if s is None else _float(s.max),
        mean=None if s is None else _float(s.mean),
        std=None if s is None else _float(s.std),
        norm=None if s is None else _float(s.norm),
        nan=None if s is None else s.nan,
        inf=None if s is None else s.inf,
        view_of=via,
    )


def site(step: Step, op: int) -> Site:
    """Op ``op`` of ``step`` with the numbers of its inputs and outputs."""
    node = step.ops[op]
    return Site(
        step=step.step,
        capture="full",
        module=node.module,
        phase=node.phase.label,
        op=op,
        name=node.name,
        inputs=tuple(numbers(step, t) for t in node.inputs),
        outputs=tuple(numbers(step, t) for t in node.outputs),
    )
