"""The typed result of a diff: plain frozen dataclasses, so callers (CLI, view, CI) read fields.

A :class:`StepDiff` compares one step of side A with one step of side B; a :class:`RunDiff` walks
the common steps of two runs (or two ranks) and keeps the diff of the first step that differs.
Statuses are graded: ``EQUAL`` (bit-identical), ``CLOSE`` (bits differ, within tolerance),
``DIFFERENT`` (beyond tolerance or not comparable), ``UNKNOWN`` (nothing recorded to decide:
views and uninitialised tensors carry no statistics).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tracefmt.model import Phase, Role, TensorStats


class Status(enum.IntEnum):
    """How two tensors (or two ops' outputs) compare, from best to worst."""

    UNKNOWN = 0
    EQUAL = 1
    CLOSE = 2
    DIFFERENT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |b|`` elementwise (NaN equals NaN)."""

    rtol: float
    atol: float


@dataclass(frozen=True, slots=True)
class Distance:
    """How far apart two tensors are.

    ``source`` says what it was computed from: ``"values"`` (exact, elementwise) or ``"stats"``
    (an estimate from min/max/mean/std/norm: ``max_abs`` is the largest change of one statistic,
    ``max_rel`` that change relative to the statistic).  ``ulp`` is the largest distance in units
    in the last place (values of one floating dtype only); ``count`` the number of elements whose
    bits differ (values only).  ``nonfinite`` is true when NaN or Inf appear on one side only.
    """

    source: str
    max_abs: float
    max_rel: float
    ulp: int | None = None
    count: int | None = None
    numel: int = 0
    nonfinite: bool = False


@dataclass(frozen=True, slots=True)
class TensorDiff:
    """One pair of tensors that do not compare equal (A's tensor ``a``, B's tensor ``b``)."""

    a: int
    b: int
    name: str | None
    role: Role
    status: Status
    dtype_a: str
    dtype_b: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    distance: Distance | None
    stats_a: TensorStats | None
    stats_b: TensorStats | None
    inferred: bool = False
    external: bool = False

    @property
    def score(self) -> float:
        """A single number to rank and plot divergences by (relative distance; 1 if unknown)."""
        if self.distance is None:
            return 1.0
        return self.distance.max_rel


@dataclass(frozen=True, slots=True)
class OpRef:
    """An op of one side: its index in that step, name, phase, module and occurrence.

    ``occurrence`` counts earlier ops of that side with the same phase, module and name, so
    ``layers.0/aten::addmm.default#1`` is the second addmm of ``layers.0`` in that phase.
    """

    index: int
    name: str
    phase: Phase
    module: str
    occurrence: int

    @property
    def label(self) -> str:
        where = self.module or "<top>"
        return f"{self.phase.label}:{where}/{self.name}#{self.occurrence}"


@dataclass(frozen=True, slots=True)
class StructuralChange:
    """A difference in what ran rather than in the numbers.

    ``kind`` is one of ``added`` (an op only B ran), ``removed`` (only A), ``module`` (matched ops
    whose module paths differ), ``order`` (the same op, run in another order), ``dtype``,
    ``shape``, ``attrs`` and ``arity`` (different numbers of inputs or outputs).  ``module``
    names the module the change is in (B's for ``added``).
    """

    kind: str
    position: int
    a: OpRef | None
    b: OpRef | None
    module: str
    detail: str


@dataclass(frozen=True, slots=True)
class OpDivergence:
    """A matched op pair at least one of whose outputs is not bit-identical."""

    position: int
    a: OpRef
    b: OpRef
    status: Status
    outputs: tuple[TensorDiff, ...]
    inputs_match: bool

    @property
    def score(self) -> float:
        return max((t.score for t in self.outputs if not t.inferred), default=0.0)

    @property
    def phase(self) -> Phase:
        return self.a.phase

    @property
    def measured(self) -> bool:
        """Close or different (not merely without numbers to compare)."""
        return self.status is Status.CLOSE or self.status is Status.DIFFERENT

    @property
    def has_distance(self) -> bool:
        return any(t.distance is not None for t in self.outputs)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the divergence starts, in execution order.

    ``kind``: ``"input"`` when a tensor entering the step from outside (a parameter, a batch,
    optimizer state) already differs and ``op`` is the first op reading it; ``"op"`` when ``op``
    read bit-identical inputs and produced different outputs (a nondeterministic kernel, a random
    op with another seed, changed attributes); ``"structural"`` when the first difference is an op
    that only one side ran.  ``tensor`` is the first differing tensor at the origin.
    """

    kind: str
    position: int
    a: OpRef | None
    b: OpRef | None
    tensor: TensorDiff | None
    inputs: tuple[TensorDiff, ...]
    outputs: tuple[TensorDiff, ...]
    message: str


@dataclass(frozen=True, slots=True)
class PhaseSpan:
    """Positions ``[start, stop)`` of the aligned execution order that belong to ``phase``."""

    phase: Phase
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class ScalarDiff:
    """A per-step scalar (``loss`` ...) recorded on both sides with different values."""

    name: str
    a: float
    b: float
    within_tolerance: bool


@dataclass(frozen=True, slots=True)
class Counts:
    """Tensor pairs compared, by status."""

    equal: int = 0
    close: int = 0
    different: int = 0
    unknown: int = 0

    @property
    def total(self) -> int:
        return self.equal + self.close + self.different + self.unknown


@dataclass(frozen=True, slots=True)
class StepDiff:
    """The comparison of step ``step_a`` (rank ``rank_a``) of A with ``step_b`` of B.

    ``identical``: same structure and every compared tensor bit-identical.
    ``rtol`` / ``atol``: the user's tolerances (``None``: the defaults of each dtype).
    ``equal``: same structure and every tensor within tolerance (the exit-0 condition).
    ``divergences`` lists every matched op with a non-identical output, in execution order;
    ``structural`` every structural change, ``modules_added`` / ``modules_removed`` the topmost
    modules whose ops ran on one side only.  ``chain`` is the ops of side ``chain_side`` from the
    origin to the op computing the loss (``loss_a``: A's loss tensor); ``chain_diverged`` says
    whether every link on it diverged (false: the difference was absorbed before the loss, and the
    chain is the data path only).
    """

    step_a: int
    step_b: int
    rank_a: int
    rank_b: int
    ops_a: int
    ops_b: int
    matched: int
    positions: int
    identical: bool
    equal: bool
    counts: Counts
    rtol: float | None
    atol: float | None
    structural: tuple[StructuralChange, ...]
    divergences: tuple[OpDivergence, ...]
    origin: Origin | None
    first_beyond_tolerance: OpDivergence | None
    first_parameter: TensorDiff | None
    first_gradient: TensorDiff | None
    first_optimizer_state: TensorDiff | None
    chain: tuple[OpRef, ...]
    chain_side: str
    chain_diverged: bool
    loss_a: int | None
    modules_added: tuple[str, ...]
    modules_removed: tuple[str, ...]
    scalars: tuple[ScalarDiff, ...]
    phase_spans: tuple[PhaseSpan, ...]

    def top_divergences(self, n: int) -> list[OpDivergence]:
        """The ``n`` measured divergences (close or different) with the largest distance; those
        without a distance (fingerprints only, shapes differ) after them; ties earliest first."""
        measured = [x for x in self.divergences if x.measured]
        measured.sort(key=lambda x: (not x.has_distance, -x.score, x.position))
        return measured[:n]

    @property
    def verdict(self) -> str:
        """``identical``, ``equal`` (within tolerance) or ``different``."""
        if self.identical:
            return "identical"
        return "equal" if self.equal else "different"


@dataclass(frozen=True, slots=True)
class StepVerdict:
    """One line of a run diff: a step pair and how it compared."""

    step: int
    verdict: str
    different_tensors: int
    structural: int


@dataclass(frozen=True, slots=True)
class RunDiff:
    """The comparison of two runs (or two ranks) over their common steps.

    ``first_divergent`` is the first step that is not bit-identical and ``first_different`` the
    first beyond tolerance; ``diff`` is the :class:`StepDiff` of the first divergent step (where
    the origin is), ``different_diff`` the one of the first different step when that is a later
    step.  The walk stops at the first different step unless asked to go on; ``common`` counts the
    steps both sides have, ``steps`` those compared.
    """

    path_a: str
    path_b: str
    rank_a: int
    rank_b: int
    common: int
    steps: tuple[StepVerdict, ...]
    only_a: tuple[int, ...]
    only_b: tuple[int, ...]
    first_divergent: int | None
    first_different: int | None
    diff: StepDiff | None
    different_diff: StepDiff | None
    stopped_early: bool

    @property
    def equal(self) -> bool:
        """Every common step equal within tolerance, and no step recorded by one side only."""
        return self.first_different is None and bool(self.steps) and not self.only_a and not self.only_b

    @property
    def identical(self) -> bool:
        return self.equal and self.first_divergent is None

    @property
    def verdict(self) -> str:
        if self.identical:
            return "identical"
        return "equal" if self.equal else "different"
