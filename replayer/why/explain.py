"""``replayer why``: every trigger event of a run, explained.

For each trigger event (full and light steps, every rank) :func:`explain` finds:

* for a **non-finite** event (``nonfinite_created``, ``nonfinite_state``, and any other trigger
  in a step whose flags show NaN/Inf created or in the state): the first op (full step) or
  module (light step) where the value entered (:mod:`replayer.why.fullorigin`,
  :mod:`replayer.why.lightorigin`); a state that was already non-finite when the step began is
  followed back through the steps the trace holds;
* for a **spike** (``loss_spike``, ``grad_norm_spike``, a remote trigger of one): the first op
  or module whose statistics departed from the step before (:mod:`replayer.why.departure`, on
  the alignment of :func:`replayer.diff.diff_steps`);
* the path from there to the loss, which rank saw it first (:mod:`replayer.why.firstrank`),
  and how to record the step again in full (:mod:`replayer.why.rerecord`).

One step of one rank is analysed once per category, however many events it holds.

Example::

    with tracefmt.open("runs/exp1") as trace:
        report = explain(trace)
    for e in report.explanations:
        print(e.rank, e.step, e.kind, e.cause.description if e.cause else "-")
"""

from __future__ import annotations

from dataclasses import dataclass

from replayer.why.causes import (
    Found,
    earlier_cause,
    full_departure_cause,
    full_nonfinite_cause,
    light_cause,
)
from replayer.why.departure import find_departure
from replayer.why.explained import Cause, Explanation, Link, WhyOptions, WhyReport
from replayer.why.firstrank import Sighting, first_seen, how_seen
from replayer.why.fullorigin import find_nonfinite_origin
from replayer.why.holdings import RankSteps, TriggerEvent
from replayer.why.lightorigin import light_departure, light_nonfinite_origin
from replayer.why.rerecord import rerecord
from tracefmt.events import (
    GRAD_NORM_SPIKE,
    LOSS_SPIKE,
    NONFINITE_CREATED,
    NONFINITE_STATE,
    REMOTE_TRIGGER,
)
from tracefmt.reader import Trace

__all__ = ["category_of", "explain"]

_NONFINITE = frozenset({NONFINITE_CREATED, NONFINITE_STATE})
_SPIKES = frozenset({LOSS_SPIKE, GRAD_NORM_SPIKE})


def category_of(event: TriggerEvent, steps: RankSteps) -> str:
    """``nonfinite``, ``spike`` or ``other`` (see the module docstring)."""
    if event.kind in _NONFINITE:
        return "nonfinite"
    if event.kind in _SPIKES:
        return "spike"
    if steps.shows_nonfinite(event.step):
        return "nonfinite"
    if event.kind == REMOTE_TRIGGER and event.fields.get("trigger") in _SPIKES:
        return "spike"
    return "other"


@dataclass(frozen=True)
class _Analysis:
    cause: Cause | None
    earlier: Cause | None
    path: tuple[Link, ...]
    module: str | None
    notes: tuple[str, ...]

    @property
    def created(self) -> bool:
        """Whether this rank made the value (not received it, not carried it in)."""
        return self.cause is not None and self.cause.kind in ("created", "state_write")


def _of(found: Found | None, notes: list[str], earlier: Found | None = None) -> _Analysis:
    if found is None:
        return _Analysis(None, None, (), None, tuple(notes))
    module = earlier.module if earlier is not None else found.module
    extra = [*found.notes, *(earlier.notes if earlier else ())]
    return _Analysis(
        found.cause, earlier.cause if earlier else None, found.path, module, (*notes, *extra)
    )


def _nonfinite(steps: RankSteps, n: int) -> _Analysis:
    notes: list[str] = []
    step = steps.step(n)
    if step is not None:
        o = find_nonfinite_origin(step)
        if o is not None:
            found = full_nonfinite_cause(steps, step, o)
            if o.kind != "state_at_start":
                return _of(found, notes)
            name = None if o.tensor is None else step.tensors[o.tensor].name
            earlier, note = earlier_cause(steps, n, name)
            return _of(found, [note], earlier)
        notes.append(f"No tensor of full step {n} holds NaN/Inf (only the loss, or none measured).")
    light = steps.light(n)
    if light is not None:
        lo = light_nonfinite_origin(light, steps.light(n - 1))
        if lo is not None:
            found = light_cause(steps, lo, n)
            if lo.kind != "state_at_start":
                return _of(found, notes)
            earlier, note = earlier_cause(steps, lo.step + 1, lo.row.name)
            return _of(found, [*notes, note], earlier)
        notes.append(f"No row of light step {n} holds NaN/Inf.")
    if step is None and light is None:
        notes.append(f"The trace holds no step {n} of rank {steps.rank}.")
    return _of(None, notes)


def _spike(steps: RankSteps, n: int, ratio: float) -> _Analysis:
    step, prev = steps.step(n), steps.step(n - 1)
    if step is not None and prev is not None:
        d = find_departure(prev, step, ratio)
        if d is not None:
            return _of(full_departure_cause(prev, step, d), [])
        return _of(None, [f"Full steps {n - 1} and {n} have the same statistics."])
    light, light_prev = steps.light(n), steps.light(n - 1)
    if light is not None and light_prev is not None:
        lo = light_departure(light, light_prev, steps.light(n - 2), ratio)
        if lo is not None:
            return _of(light_cause(steps, lo, n), [])
        return _of(None, [f"Light steps {n - 1} and {n} have the same statistics."])
    return _of(None, [f"The trace holds no step {n - 1} of rank {steps.rank} to compare step {n} with."])


def _analyse(steps: RankSteps, n: int, category: str, options: WhyOptions) -> _Analysis:
    if category == "nonfinite":
        return _nonfinite(steps, n)
    if category == "spike":
        return _spike(steps, n, options.spike_ratio)
    return _of(None, ["No NaN/Inf in the step and no spike: there is no origin to trace."])


def _elide(path: tuple[Link, ...], keep: int) -> tuple[tuple[Link, ...], int]:
    if len(path) <= keep:
        return path, 0
    head = keep // 2
    return (*path[:head], *path[len(path) - (keep - head) :]), len(path) - keep


def explain(trace: Trace, options: WhyOptions | None = None) -> WhyReport:
    """Explain every trigger event of ``trace`` (narrowed by ``options``); see the module
    docstring.  Raises :class:`tracefmt.TraceError` for a rank the trace does not have."""
    opts = options or WhyOptions()
    if opts.rank is not None:
        trace.rank_file(opts.rank)  # a rank the trace lacks: its TraceError says which it has
    runs = {r: RankSteps(trace, r) for r in trace.ranks}
    events = {r: s.events() for r, s in runs.items()}
    analyses: dict[tuple[int, int, str], _Analysis] = {}
    chosen: list[tuple[TriggerEvent, str]] = []
    for rank, evs in events.items():
        for ev in evs:
            if (opts.rank is not None and rank != opts.rank) or (
                opts.step is not None and ev.step != opts.step
            ):
                continue
            category = category_of(ev, runs[rank])
            key = (rank, ev.step, category)
            if key not in analyses:
                analyses[key] = _analyse(runs[rank], ev.step, category, opts)
            chosen.append((ev, category))
    by_category: dict[str, list[Sighting]] = {}
    every: list[Sighting] = []
    for rank, evs in events.items():
        for ev in evs:
            category = category_of(ev, runs[rank])
            done = analyses.get((rank, ev.step, category))
            s = Sighting(rank, ev.step, ev.kind, ev.fields, done is not None and done.created)
            by_category.setdefault(category, []).append(s)
            every.append(s)
    firsts = {c: first_seen(s) for c, s in by_category.items()}
    out = []
    for ev, category in chosen:
        a = analyses[(ev.rank, ev.step, category)]
        path, elided = _elide(a.path, opts.max_path)
        notes = a.notes
        if ev.kind == REMOTE_TRIGGER:
            notes = (
                f"Rank {ev.fields.get('rank')} posted it ({how_seen(str(ev.fields.get('trigger')))}).",
                *notes,
            )
        out.append(
            Explanation(
                rank=ev.rank,
                step=ev.step,
                kind=ev.kind,
                reason=ev.reason,
                fields=dict(ev.fields),
                category=category,
                capture=runs[ev.rank].capture(ev.step),
                cause=a.cause,
                earlier=a.earlier,
                path=path,
                path_elided=elided,
                first_seen=firsts.get(category),
                rerecord=rerecord(str(trace.path), ev.step, ev.rank, trace.world_size, a.module),
                notes=notes,
            )
        )
    report_notes = tuple(
        f"Rank {r} cannot be read: {why}" for r, why in trace.damaged_ranks.items()
    ) + tuple(f"Rank {r} wrote no file." for r in trace.missing_ranks)
    return WhyReport(str(trace.path), trace.ranks, opts, tuple(out), first_seen(every), report_notes)
