"""Run-wide series: a metric's value at every committed step, as numpy arrays, read in bulk.

:func:`tracefmt.open` hands out one :class:`~tracefmt.Step` at a time, a Python object per op and
tensor: right for one step, far too slow for "this layer's gradient norm over 100,000 steps".
:func:`read_series` reads a rank's whole step index, resolves which tensors make each series once
per distinct graph (a long run has few: graphs are deduplicated), and gathers the statistics
rows it needs block by block with numpy indexing (:mod:`tracefmt._colstats`); it reads the step
index and the statistics tables it plots, nothing else.  Series come from full steps (``stats``)
or from light steps (``light_stats``, format 1.4: module outputs, parameter gradients, updates
and values, every step of a flight-recorded run).

Metrics (:data:`METRICS`): the statistics of a tensor (:data:`STAT_METRICS`: ``norm``,
``max_abs``, ``min``, ``max``, ``mean``, ``std``, ``nan``, ``inf``, ``nonfinite``, ``zeros``) of
the selected tensors or modules (:class:`Selection`, the rules in :mod:`tracefmt._colpick`);
``update_ratio``, a parameter's update norm over its norm after the update (from light steps:
a full step records each parameter before and after the optimizer step, whose norms do not give
the update's); ``step_time`` (seconds); and the step's scalars by name (``loss``, ``lr``, or
``scalar:NAME``).  Example::

    with tracefmt.open("runs/exp1") as trace:
        s = read_series(trace, "norm", Selection(module="h.*.mlp", phase="backward"))
        for label, values in zip(s.labels, s.values):
            print(label, s.steps[values.argmax()], values.max())
        events = read_events(trace)              # step, kind of every event, for markers

:func:`read_histograms` gives the recorded histograms (``record(..., hist_bins=N)``) of the
selected tensors over the steps, for distribution plots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracefmt import _layout as L
from tracefmt._colhist import HIST_HINT, HistSeries, rank_histograms
from tracefmt._colpick import PHASE_KINDS
from tracefmt._colread import index_blocks, lookup, strings_of
from tracefmt._colstats import Series, full_series, light_series
from tracefmt._rankfile import RankFile
from tracefmt.errors import TraceError
from tracefmt.light import LightKind
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace

__all__ = [
    "HIST_HINT",
    "METRICS",
    "PHASES",
    "SOURCES",
    "STAT_METRICS",
    "HistSeries",
    "RunEvents",
    "Selection",
    "SeriesSet",
    "metric_names",
    "read_events",
    "read_histograms",
    "read_series",
    "scalar_names",
]

#: Statistics of tensors (of a module's tensors taken together): name -> what it is.
STAT_METRICS: dict[str, str] = {
    "norm": "L2 norm",
    "max_abs": "largest magnitude",
    "min": "smallest value",
    "max": "largest value",
    "mean": "mean",
    "std": "standard deviation",
    "nan": "number of NaN elements",
    "inf": "number of infinite elements",
    "nonfinite": "number of NaN and infinite elements",
    "zeros": "number of zero elements (full steps)",
}
#: Every metric that is not a scalar's name: name -> what it is.
METRICS: dict[str, str] = {
    **STAT_METRICS,
    "update_ratio": "update norm / parameter norm after the update (light steps)",
    "step_time": "seconds the step took",
    "loss": "the loss scalar",
}
PHASES = ("forward", "backward", "optimizer")
SOURCES = ("auto", "full", "light")
_SCALAR_PREFIX = "scalar:"


@dataclass(frozen=True)
class Selection:
    """Which series: ``module`` (a glob over module paths, ``<root>`` or ``*`` for the root) and
    ``tensor`` (a glob over tensor labels, or over a light row's name) as described in
    :mod:`tracefmt._colpick`; ``phase`` (``forward``, ``backward``, ``optimizer``; by module it
    defaults to ``forward``: module outputs, gradients, parameters); ``source``: ``full``,
    ``light``, or ``auto``: the one with more steps, the other where that has no such series."""

    module: str | None = None
    tensor: str | None = None
    phase: str | None = None
    source: str = "auto"

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in PHASES:
            raise TraceError(f"Unknown phase {self.phase!r}; use one of {', '.join(PHASES)}.")
        if self.source not in SOURCES:
            raise TraceError(f"Unknown source {self.source!r}; use one of {', '.join(SOURCES)}.")


@dataclass(frozen=True)
class SeriesSet:
    """One rank's series of ``metric``: ``values[i]`` is series ``labels[i]`` at ``steps`` (NaN
    where a step did not record it); ``source`` says where they came from (``full``, ``light``,
    or ``steps``: the step index and scalars)."""

    metric: str
    rank: int
    source: str
    steps: np.ndarray
    labels: tuple[str, ...]
    values: np.ndarray

    def series(self, label: str) -> np.ndarray:
        """The values of series ``label``."""
        try:
            return np.asarray(self.values[self.labels.index(label)])
        except ValueError:
            raise TraceError(f"No series {label!r}; there are {', '.join(self.labels)}.") from None


@dataclass(frozen=True)
class RunEvents:
    """One rank's events, full and light steps' together, in step order: ``kinds[i]`` indexes
    ``kind_labels``; ``light[i]`` says the event is a light step's."""

    rank: int
    steps: np.ndarray
    kinds: np.ndarray
    kind_labels: tuple[str, ...]
    light: np.ndarray


def _named_rows(rf: RankFile, table: str, light: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of ``scalars``/``events`` (``light``: of ``light_scalars``/``light_events``) of
    the committed steps: the step of each, its name or kind string id, and the row."""
    index = rf.light_rows() if light else rf.step_rows()
    is_scalars = table in (L.SCALARS, L.LIGHT_SCALARS)
    fields = ("scalar_start", "scalar_count") if is_scalars else ("event_start", "event_count")
    steps, ids, rows = [], [], []
    if len(index):
        for block in index_blocks(rf, table, index, fields):
            got, owner = block.flat(index[fields[1]][block.begin : block.end])
            steps.append(index["step"][block.begin : block.end][owner].astype(np.int64))
            ids.append(got["name" if is_scalars else "kind"].astype(np.int64))
            rows.append(got)
    if not steps:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, dtype=L.TABLES[table][0])
    return np.concatenate(steps), np.concatenate(ids), np.concatenate(rows)


def _scalar_tables(rf: RankFile) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]]:
    out = []
    for table, light in ((L.SCALARS, False), (L.LIGHT_SCALARS, True)):
        if light and rf.num_light_steps() == 0:
            continue
        steps, ids, rows = _named_rows(rf, table, light)
        out.append((steps, ids, rows["value"].astype(np.float64), strings_of(rf, ids, "scalar")))
    return out


def scalar_names(trace: Trace, rank: int | None = None) -> list[str]:
    """The names of the scalars ``rank`` recorded (full and light steps), sorted."""
    rf = trace.rank_file(rank)
    return sorted({name for *_, names in _scalar_tables(rf) for name in names.values()})


def metric_names(trace: Trace, rank: int | None = None) -> list[str]:
    """Every metric :func:`read_series` takes for ``rank``: :data:`METRICS` and the scalars."""
    return [*METRICS, *(n for n in scalar_names(trace, rank) if n not in METRICS)]


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per step one value from ``(steps, values)`` parts, the first part's where several have
    the step (a full step's over its light step's)."""
    steps = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    values = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    first = np.ones(len(steps), dtype=bool)
    first[1:] = steps[1:] != steps[:-1]
    return steps[first], values[first]


def _scalar_series(rf: RankFile, name: str) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for steps, ids, values, names in _scalar_tables(rf):
        wanted = {sid for sid, text in names.items() if text == name}
        hit = np.isin(ids, list(wanted))
        parts.append((steps[hit], values[hit]))
    return _merge(parts)


def _durations(rf: RankFile) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for index in (rf.step_rows(), rf.light_rows()):
        ok = np.isfinite(index["duration"])
        parts.append((index["step"][ok].astype(np.int64), index["duration"][ok].astype(np.float64)))
    return _merge(parts)


def _unknown_metric(trace: Trace, rank: int | None, metric: str) -> TraceError:
    names = metric_names(trace, rank)
    return TraceError(
        f"Unknown metric {metric!r}; use one of {', '.join(names)} (a scalar also as scalar:NAME)."
    )


def _stat_series(
    rf: RankFile, metric: str, sel: Selection, progress: ProgressFn | None
) -> tuple[str, Series]:
    """The statistic series of ``rf`` and where they came from (``full`` or ``light``)."""
    if sel.source == "auto":
        full_steps = int((rf.step_rows()["stats_count"] > 0).sum())
        light_first = metric == "update_ratio" or rf.num_light_steps() > full_steps
        order = ["light", "full"] if light_first else ["full", "light"]
    else:
        order = [sel.source]
    found = Series(np.zeros(0, np.int64), [], np.zeros((0, 0)))
    for source in order:
        if source == "full" and metric == "update_ratio":
            continue
        if source == "light" and metric == "zeros":
            continue
        found = _from(rf, source, metric, sel, progress)
        if found.labels:
            return source, found
    return order[0], found


def _from(rf: RankFile, source: str, metric: str, sel: Selection, progress: ProgressFn | None) -> Series:
    if source == "full":
        return full_series(
            rf, metric, module=sel.module, tensor=sel.tensor, phase=sel.phase, progress=progress
        )
    by_module = sel.tensor is None
    if metric == "update_ratio":
        sides = [
            light_series(
                rf,
                "norm",
                module=sel.module,
                tensor=sel.tensor,
                kinds=frozenset({kind}),
                progress=progress,
            )
            for kind in (LightKind.UPDATE, LightKind.PARAMETER)
        ]
        labels = [x for x in sides[0].labels if x in sides[1].labels]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.array(
                [
                    sides[0].values[sides[0].labels.index(x)] / sides[1].values[sides[1].labels.index(x)]
                    for x in labels
                ]
            ).reshape(len(labels), len(sides[0].steps))
        return Series(sides[0].steps, labels, np.where(np.isfinite(values), values, np.nan))
    phase = sel.phase or ("forward" if by_module else None)
    kinds = frozenset(LightKind) if phase is None else frozenset({PHASE_KINDS[phase]})
    return light_series(
        rf,
        metric,
        module=sel.module,
        tensor=sel.tensor,
        kinds=kinds,
        suffix=phase is None,
        progress=progress,
    )


def read_series(
    trace: Trace,
    metric: str,
    selection: Selection | None = None,
    *,
    rank: int | None = None,
    progress: ProgressFn | None = None,
) -> SeriesSet:
    """``metric`` at every committed step of ``rank`` (default: the lowest) for ``selection``.

    Raises :class:`~tracefmt.errors.TraceError` naming the valid metrics for an unknown one, and
    saying what was looked for when no series matches.
    """
    sel = selection or Selection()
    rf = trace.rank_file(rank)
    if metric == "step_time":
        steps, values = _durations(rf)
        return SeriesSet(metric, rf.rank, "steps", steps, ("step_time",), values[None, :])
    if metric in STAT_METRICS or metric == "update_ratio":
        source, s = _stat_series(rf, metric, sel, progress)
        if not s.labels:
            raise TraceError(_nothing(rf, metric, sel, source))
        return SeriesSet(metric, rf.rank, source, s.steps, tuple(s.labels), s.values)
    name = metric.removeprefix(_SCALAR_PREFIX)
    steps, values = _scalar_series(rf, name)
    if not len(steps):
        if metric == "loss" or metric.startswith(_SCALAR_PREFIX):
            raise TraceError(f"Rank {rf.rank} recorded no scalar {name!r} in {trace.path}.")
        raise _unknown_metric(trace, rf.rank, metric)
    return SeriesSet(metric, rf.rank, "steps", steps, (name,), values[None, :])


def _nothing(rf: RankFile, metric: str, sel: Selection, source: str) -> str:
    what = (
        ", ".join(
            f"{k} {v!r}"
            for k, v in (("module", sel.module), ("tensor", sel.tensor), ("phase", sel.phase))
            if v
        )
        or "every module"
    )
    if metric == "update_ratio":
        return (
            f"Rank {rf.rank} of {rf.path} has no update ratios for {what}: they come from light "
            "steps with updates, recorded by record(..., mode='flight') or mode='light' (with "
            "light_updates=True)."
        )
    if metric == "zeros" and source == "light":
        return (
            "Zeros are counted in full steps only (light rows count NaN and Inf); read them "
            "from the full steps (source 'full' or 'auto')."
        )
    steps = "light steps" if source == "light" else "full steps with statistics"
    return (
        f"No {metric!r} series of {what} in rank {rf.rank}'s {steps} ({rf.path}); check the globs "
        "(tracefmt show lists a step's modules and tensors), or choose another --phase."
    )


def read_events(trace: Trace, *, rank: int | None = None) -> RunEvents:
    """Every event of ``rank``'s full and light steps: its step and kind (no message)."""
    rf = trace.rank_file(rank)
    parts = []
    for table, light in ((L.EVENTS, False), (L.LIGHT_EVENTS, True)):
        if light and rf.num_light_steps() == 0:
            continue
        steps, ids, _ = _named_rows(rf, table, light)
        parts.append((steps, ids, np.full(len(steps), light), strings_of(rf, ids, "event kind")))
    labels = sorted({k for *_, kinds in parts for k in kinds.values()})
    codes = {k: i for i, k in enumerate(labels)}
    steps = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    kinds = (
        np.concatenate([lookup({s: codes[t] for s, t in p[3].items()}, p[1]) for p in parts])
        if parts
        else np.zeros(0, np.int64)
    )
    is_light = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, bool)
    order = np.argsort(steps, kind="stable")
    return RunEvents(rf.rank, steps[order], kinds[order], tuple(labels), is_light[order])


def read_histograms(
    trace: Trace,
    selection: Selection | None = None,
    *,
    rank: int | None = None,
    progress: ProgressFn | None = None,
) -> list[HistSeries]:
    """The histograms ``rank`` recorded of each tensor ``selection`` picks by tensor (its
    ``tensor`` glob, default every tensor; ``module`` and ``phase`` narrow it), one
    :class:`HistSeries` per tensor with at least one, in label order.

    Raises :class:`~tracefmt.errors.TraceError` saying how to record histograms when the rank
    has none, or none of the selection.
    """
    sel = selection or Selection()
    rf = trace.rank_file(rank)
    found = rank_histograms(rf, module=sel.module, tensor=sel.tensor, phase=sel.phase, progress=progress)
    if not found:
        what = ", ".join(
            f"{k} {v!r}"
            for k, v in (("tensor", sel.tensor), ("module", sel.module), ("phase", sel.phase))
            if v
        )
        raise TraceError(
            f"Rank {rf.rank} of {trace.path} has histograms, but none of {what}; check the globs "
            "(tracefmt show lists a step's tensors: the measured ones have histograms)."
        )
    return found
