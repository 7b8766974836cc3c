"""Where a step's NaN and Inf come from: created by an op, there by design, propagated, or state.

A step whose statistics count NaN or Inf somewhere is not necessarily broken: an attention mask
holds ``-inf`` on purpose (``masked_fill(mask, -inf)``, ``full(..., -inf)``,
``scalar_tensor(-inf)``), and every op downstream of it holds it too.  Spec section 6.5 defines
what counts, and this module is its reference (pure numpy, no torch):

* an op that outputs NaN (or Inf) is **propagated** when one of its tensor inputs already holds
  NaN (or Inf), **by design** when one of its constant arguments (its attributes, section 10) is
  NaN (or infinite), and **created** otherwise.  The two kinds are judged apart, so a softmax
  over a row of ``-inf`` that outputs NaN created that NaN.  An op that creates either kind is
  created; else one with a kind by design is by design; else it is propagated.
* a tensor of role parameter, gradient or optimizer state that holds NaN or Inf, and a
  non-finite ``loss`` scalar, are **state**: they always count.

A tensor without counts (an unmeasured view, section 5.7) holds what the inputs of the op that
produced it hold; one without counts and without a producer holds nothing non-finite.

The same classification serves the writer (:func:`classify_record`, from the record it is
given), the reader (:func:`classify_step`, from a loaded step) and the validator (:func:`classify`,
from rows).  Light steps (format 1.4) have no graph: :func:`light_report` reads their rows.

Example::

    step = trace.step(37)
    report = classify_step(step)
    if report.first_created is not None:
        op = step.ops[report.first_created.op]     # what ``replayer why`` names
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from tracefmt import _layout as L
from tracefmt._decode import Step
from tracefmt.attrcodec import decode_attrs
from tracefmt.light import LightFlags, LightKind
from tracefmt.model import Role
from tracefmt.records import StepRecord

__all__ = [
    "LOSS",
    "STATE_ROLES",
    "Counts",
    "GraphFlow",
    "LightReport",
    "NonfiniteOp",
    "NonfiniteReport",
    "Origin",
    "classify",
    "classify_record",
    "classify_step",
    "constant_kinds",
    "count_flags",
    "light_report",
    "stored_constant_kinds",
]

#: The scalar whose non-finite value is state non-finite.
LOSS = "loss"
#: Roles whose NaN/Inf always count (spec section 6.5).
STATE_ROLES = frozenset({Role.PARAMETER, Role.GRADIENT, Role.OPTIMIZER_STATE})
_STATE_TABLE = np.zeros(256, dtype=bool)  # by role code
_STATE_TABLE[[int(r) for r in STATE_ROLES]] = True
_STATE_KINDS = np.array(
    [int(LightKind.GRADIENT), int(LightKind.UPDATE), int(LightKind.PARAMETER)], dtype=np.uint8
)


class Origin(enum.Enum):
    """Where an op's non-finite output comes from."""

    CREATED = "created"  #: from finite inputs and finite constants
    BY_DESIGN = "by_design"  #: from a non-finite constant argument
    PROPAGATED = "propagated"  #: from a tensor input that already held it


@dataclass(frozen=True, slots=True)
class NonfiniteOp:
    """An op whose outputs hold NaN or Inf: its index, why, which kinds, which outputs hold them,
    and (propagated) which inputs already held them."""

    op: int
    origin: Origin
    nan: bool
    inf: bool
    outputs: tuple[int, ...]
    sources: tuple[int, ...] = ()


@dataclass(frozen=True)
class NonfiniteReport:
    """The classification of one full step (ops in execution order)."""

    ops: tuple[NonfiniteOp, ...] = ()
    #: tensors of a state role (:data:`STATE_ROLES`) holding NaN or Inf
    state_tensors: tuple[int, ...] = ()
    #: non-finite tensors no op of the step produced (they entered it that way)
    entered: tuple[int, ...] = ()
    loss_nonfinite: bool = False

    def _of(self, origin: Origin) -> tuple[NonfiniteOp, ...]:
        return tuple(o for o in self.ops if o.origin is origin)

    @property
    def created(self) -> tuple[NonfiniteOp, ...]:
        return self._of(Origin.CREATED)

    @property
    def by_design(self) -> tuple[NonfiniteOp, ...]:
        return self._of(Origin.BY_DESIGN)

    @property
    def propagated(self) -> tuple[NonfiniteOp, ...]:
        return self._of(Origin.PROPAGATED)

    @property
    def first_created(self) -> NonfiniteOp | None:
        """The first op in execution order that created NaN/Inf (what ``replayer why`` names)."""
        return next((o for o in self.ops if o.origin is Origin.CREATED), None)

    @property
    def state(self) -> bool:
        return bool(self.state_tensors) or self.loss_nonfinite

    @property
    def flags(self) -> int:
        """``STEP_NONFINITE_CREATED`` and ``STEP_NONFINITE_STATE`` as this report says."""
        created = L.STEP_NONFINITE_CREATED if self.first_created is not None else 0
        return created | (L.STEP_NONFINITE_STATE if self.state else 0)


class Counts(NamedTuple):
    """Per tensor: whether its NaN/Inf were counted, and whether it holds NaN, and Inf."""

    counted: np.ndarray
    nan: np.ndarray
    inf: np.ndarray

    @classmethod
    def of_stats(cls, stats: np.ndarray) -> Counts:
        """From ``stats`` rows (``STAT_COUNTS`` set: counted)."""
        counted = (stats["flags"] & int(L.STAT_COUNTS)) != 0
        return cls(counted, counted & (stats["nan"] > 0), counted & (stats["inf"] > 0))


class GraphFlow(NamedTuple):
    """What classification needs of a graph: each op's input tensors, each tensor's producer
    (-1: none) and role code.  Hostile values (an index out of range) are ignored."""

    inputs: Sequence[Sequence[int]]
    producers: Sequence[int] | np.ndarray
    roles: np.ndarray


def count_flags(counts: Counts) -> int:
    """``STEP_HAS_NAN`` and ``STEP_HAS_INF`` of a step with ``counts`` (TF-STEP-005)."""
    return (L.STEP_HAS_NAN if counts.nan.any() else 0) | (L.STEP_HAS_INF if counts.inf.any() else 0)


def _nonfinite_loss(scalars: Mapping[str, float]) -> bool:
    loss = scalars.get(LOSS)
    return loss is not None and not math.isfinite(loss)


def constant_kinds(attrs: Any) -> tuple[bool, bool]:
    """Whether decoded op attributes hold a NaN, and an infinity, anywhere (complex parts,
    list items and nested objects included)."""
    nan = inf = False
    stack = [attrs]
    while stack:
        value = stack.pop()
        if isinstance(value, float):
            nan, inf = nan or math.isnan(value), inf or math.isinf(value)
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return nan, inf


def stored_constant_kinds(text: str | None) -> tuple[bool, bool]:
    """:func:`constant_kinds` of attributes as stored; only a ``$float`` marker can be non-finite."""
    if not text or "$float" not in text:
        return False, False
    try:
        return constant_kinds(decode_attrs(text))
    except ValueError:
        return False, False


class _Holds:
    """Whether a tensor holds NaN, and Inf: its counts, or for a tensor without counts what the
    inputs of its producer hold (memoized; a producer cycle, possible only in a hostile file,
    holds neither)."""

    def __init__(self, counts: Counts, producers: list[int], inputs: Sequence[Sequence[int]]) -> None:
        self._counted = counts.counted.tolist()
        self._nan, self._inf = counts.nan.tolist(), counts.inf.tolist()
        self._producers, self._inputs = producers, inputs
        self._memo: dict[int, tuple[bool, bool]] = {}

    def inputs(self, op: int) -> list[int]:
        """Op ``op``'s input tensors (those in range)."""
        n = len(self._counted)
        return [t for t in self._inputs[op] if 0 <= t < n]

    def _known(self, t: int) -> tuple[bool, bool] | None:
        if self._counted[t]:
            return self._nan[t], self._inf[t]
        if self._producers[t] < 0:
            return False, False
        return self._memo.get(t)

    def __call__(self, t: int) -> tuple[bool, bool]:
        known = self._known(t)
        if known is not None:
            return known
        # Depth first without recursion (view chains can be long); a tensor on the current path
        # met again is a cycle and holds neither.
        on_path = {t}
        stack = [(t, iter(self.inputs(self._producers[t])))]
        while stack:
            u, pending = stack[-1]
            for i in pending:
                if self._known(i) is None and i not in on_path:
                    on_path.add(i)
                    stack.append((i, iter(self.inputs(self._producers[i]))))
                    break
            else:
                found = [self._known(i) or (False, False) for i in self.inputs(self._producers[u])]
                self._memo[u] = (any(f[0] for f in found), any(f[1] for f in found))
                on_path.discard(u)
                stack.pop()
        return self._memo[t]


def classify(
    counts: Counts,
    flow: Callable[[], GraphFlow],
    constants: Callable[[int], tuple[bool, bool]],
    scalars: Mapping[str, float],
) -> NonfiniteReport:
    """Classify a step's non-finite values (see the module docstring).

    ``flow()`` is called only when some tensor holds NaN or Inf; ``constants(op)`` says whether
    op ``op``'s constant arguments hold a NaN, and an infinity (asked only of ops that may have
    made theirs by design).
    """
    loss = _nonfinite_loss(scalars)
    bad = counts.nan | counts.inf
    if not bad.any():
        return NonfiniteReport(loss_nonfinite=loss)
    g = flow()
    n_ops = len(g.inputs)
    producers = np.asarray(g.producers, dtype=np.int64)
    producers = np.where((producers >= 0) & (producers < n_ops), producers, -1)
    state = np.flatnonzero(bad & _STATE_TABLE[np.asarray(g.roles, dtype=np.uint8)])
    holds = _Holds(counts, producers.tolist(), g.inputs)
    ops: list[NonfiniteOp] = []
    made = np.flatnonzero(bad & (producers >= 0))
    made = made[np.argsort(producers[made], kind="stable")]
    by_op, first = np.unique(producers[made], return_index=True)
    groups = np.split(made, first[1:]) if len(made) else []
    for op, outs_array in zip(by_op.tolist(), groups, strict=True):
        outs = tuple(outs_array.tolist())
        ins = holds.inputs(op)
        const: tuple[bool, bool] | None = None
        origins: list[Origin] = []
        for kind in (0, 1):  # NaN, then Inf
            if not any(holds(t)[kind] for t in outs):
                continue
            if any(holds(i)[kind] for i in ins):
                origins.append(Origin.PROPAGATED)
                continue
            if const is None:
                const = constants(op)
            origins.append(Origin.BY_DESIGN if const[kind] else Origin.CREATED)
        origin = next((o for o in (Origin.CREATED, Origin.BY_DESIGN) if o in origins), Origin.PROPAGATED)
        sources = tuple(i for i in ins if any(holds(i))) if origin is Origin.PROPAGATED else ()
        out_nan, out_inf = any(holds(t)[0] for t in outs), any(holds(t)[1] for t in outs)
        ops.append(NonfiniteOp(op, origin, out_nan, out_inf, outs, sources))
    entered = tuple(np.flatnonzero(bad & (producers < 0)).tolist())
    return NonfiniteReport(tuple(ops), tuple(state.tolist()), entered, loss)


def classify_record(
    record: StepRecord, flows: MutableMapping[bytes, GraphFlow] | None = None
) -> NonfiniteReport:
    """The classification of a step about to be written (what the writer's flags say).

    ``flows`` caches each graph structure's :class:`GraphFlow` by digest (a writer's steps
    mostly repeat one graph); it is cleared when it holds 64.
    """
    scalars = {k: float(v) for k, v in record.scalars.items()}
    if record.stats is None or not len(record.stats):
        return NonfiniteReport(loss_nonfinite=_nonfinite_loss(scalars))
    graph = record.graph

    def flow() -> GraphFlow:
        cached = None if flows is None else flows.get(graph.digest)
        if cached is not None:
            return cached
        made = GraphFlow(
            [[t for t, _, _ in op.inputs] for op in graph.ops],
            np.array([t.producer for t in graph.tensors], dtype=np.int64),
            np.array([int(t.role) for t in graph.tensors], dtype=np.uint8),
        )
        if flows is not None:
            if len(flows) >= 64:
                flows.clear()
            flows[graph.digest] = made
        return made

    counts = Counts.of_stats(np.asarray(record.stats, dtype=L.STATS_DTYPE))
    return classify(counts, flow, lambda op: stored_constant_kinds(graph.ops[op].attrs), scalars)


def classify_step(step: Step) -> NonfiniteReport:
    """The classification of a loaded step (its ops' attributes are the step's own)."""
    n = len(step.tensors)
    counted = np.array([t.stats is not None and t.stats.nan is not None for t in step.tensors], bool)
    nan = np.array([bool(t.stats is not None and t.stats.nan) for t in step.tensors], bool)
    inf = np.array([bool(t.stats is not None and t.stats.inf) for t in step.tensors], bool)

    def flow() -> GraphFlow:
        return GraphFlow(
            [op.inputs for op in step.ops],
            [-1 if t.meta.producer is None else t.meta.producer for t in step.tensors],
            np.array([int(t.role) for t in step.tensors], dtype=np.uint8).reshape(n),
        )

    counts = Counts(counted.reshape(n), nan.reshape(n), inf.reshape(n))
    return classify(counts, flow, lambda op: constant_kinds(step.ops[op].attrs), step.scalars)


@dataclass(frozen=True)
class LightReport:
    """The classification of a light step's rows (indices into its rows, in their order)."""

    #: ``OUTPUT`` rows holding NaN/Inf whose module's inputs were finite
    created: tuple[int, ...] = ()
    #: ``GRADIENT``, ``UPDATE`` and ``PARAMETER`` rows holding NaN/Inf
    state_rows: tuple[int, ...] = ()
    loss_nonfinite: bool = False
    #: ``STEP_HAS_NAN`` and ``STEP_HAS_INF`` of the rows
    count_flags: int = 0

    @property
    def flags(self) -> int:
        """Every step flag of the light step (section 6.5)."""
        created = L.STEP_NONFINITE_CREATED if self.created else 0
        state = L.STEP_NONFINITE_STATE if self.state_rows or self.loss_nonfinite else 0
        return self.count_flags | created | state


def light_report(rows: np.ndarray, scalars: Mapping[str, float]) -> LightReport:
    """Classify light rows (``LIGHT_ROW_DTYPE``; their ``name`` does not matter here)."""
    counted = (rows["flags"] & int(LightFlags.COUNTS)) != 0
    nan, inf = counted & (rows["nan"] > 0), counted & (rows["inf"] > 0)
    bad = nan | inf
    output = rows["kind"] == int(LightKind.OUTPUT)
    inputs_bad = (rows["flags"] & int(LightFlags.INPUTS_NONFINITE)) != 0
    return LightReport(
        created=tuple(np.flatnonzero(bad & output & ~inputs_bad).tolist()),
        state_rows=tuple(np.flatnonzero(bad & np.isin(rows["kind"], _STATE_KINDS)).tolist()),
        loss_nonfinite=_nonfinite_loss(scalars),
        count_flags=count_flags(Counts(counted, nan, inf)),
    )
