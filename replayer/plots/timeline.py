"""``replayer timeline``: a metric across every recorded step, one line per module or tensor (or,
over several ranks, a band from the smallest to the largest rank with the median line), the
run's events marked.

The numbers come from :func:`tracefmt.columns.read_series` (bulk reads of the step index and the
statistics tables, nothing else); this module aligns the ranks on one step axis, keeps the
``max_lines`` series with the largest values (saying which it left out), and draws them.  A line
of 100,000 steps is drawn from the smallest and largest value of each of about 2,000 runs of
steps, so no spike is lost and an SVG stays small.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from replayer.errors import ReplayError
from replayer.plots.figures import buckets, decimate, draw_events, line_color, new_figure
from tracefmt.columns import METRICS, RunEvents, Selection, read_events, read_series
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace

__all__ = ["Timeline", "TimelineOptions", "read_timeline", "timeline_figure"]

#: A positive series is drawn on a log axis when its largest value is this many times its smallest.
LOG_RATIO = 100.0
_STYLES = ("-", "--", ":", "-.")
#: What the steps of a series' source are, for the title.
_SOURCES = {"full": "full steps", "light": "light steps", "steps": "every recorded step"}


@dataclass(frozen=True)
class TimelineOptions:
    """``metric`` (:data:`tracefmt.columns.METRICS` or a scalar's name) of ``selection``, on
    ``ranks`` (None: the lowest rank); ``band``: over several ranks, one band per series instead
    of a line per rank; ``max_lines``: the most lines drawn (the series with the largest values
    are kept); ``log``: a log y axis (None: when positive values span more than two decades);
    ``events``: mark the run's events."""

    metric: str = "norm"
    selection: Selection = field(default_factory=Selection)
    ranks: tuple[int, ...] | None = None
    band: bool = False
    max_lines: int = 20
    log: bool | None = None
    events: bool = True

    def __post_init__(self) -> None:
        if self.max_lines < 1:
            raise ReplayError(f"max_lines must be at least 1, not {self.max_lines}.")


@dataclass(frozen=True)
class Timeline:
    """The series drawn: ``values[r, i]`` is series ``labels[i]`` of rank ``ranks[r]`` at
    ``steps`` (NaN where not recorded); ``notes`` say what was left out and why."""

    metric: str
    source: str
    ranks: tuple[int, ...]
    steps: np.ndarray
    labels: tuple[str, ...]
    values: np.ndarray
    events: tuple[RunEvents, ...]
    notes: tuple[str, ...]
    title: str


def _describe(metric: str, sel: Selection) -> str:
    if metric not in METRICS or metric in ("step_time", "loss"):
        return metric
    if sel.tensor is not None:
        what = f"tensors {sel.tensor!r}" + (f" in {sel.module!r}" if sel.module else "")
        return f"{metric} of {what}" + (f" ({sel.phase})" if sel.phase else "")
    phase = sel.phase or "forward"
    kind = {"forward": "outputs", "backward": "parameter gradients", "optimizer": "parameters"}[phase]
    if metric == "update_ratio":
        kind = "parameters"
    return f"{metric} of the {kind} of modules {sel.module or '*'!r}"


def _keep(labels: list[str], values: np.ndarray, limit: int) -> tuple[list[int], list[str]]:
    """Indices of the series to draw (at most ``limit``, those with the largest magnitudes) and
    notes on the others."""
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN series
        size = np.nanmax(np.abs(values), axis=(0, 2)) if values.size else np.zeros(len(labels))
    empty = [i for i in range(len(labels)) if not np.isfinite(size[i])]
    if empty:
        named = ", ".join(labels[i] for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
        notes.append(f"{len(empty)} series recorded no value ({named}).")
    have = [i for i in range(len(labels)) if np.isfinite(size[i])]
    if len(have) > limit:
        kept = sorted(sorted(have, key=lambda i: -size[i])[:limit])
        notes.append(
            f"Showing the {limit} of {len(have)} series with the largest values; raise "
            "--max-lines or narrow --module/--tensor to see the others."
        )
        return kept, notes
    return have, notes


def read_timeline(
    trace: Trace, options: TimelineOptions, *, progress: ProgressFn | None = None
) -> Timeline:
    """Read what :func:`timeline_figure` draws: the series of every rank of ``options``."""
    ranks = options.ranks or (trace.ranks[0],)
    sets = []
    for i, rank in enumerate(ranks):
        sets.append(
            read_series(
                trace,
                options.metric,
                options.selection,
                rank=rank,
                progress=progress if len(ranks) == 1 else None,
            )
        )
        if progress is not None and len(ranks) > 1:
            progress(i + 1, len(ranks))
    steps = np.unique(np.concatenate([s.steps for s in sets]))
    labels: list[str] = list(dict.fromkeys(label for s in sets for label in s.labels))
    values = np.full((len(ranks), len(labels), len(steps)), np.nan)
    for r, s in enumerate(sets):
        pos = np.searchsorted(steps, s.steps)
        for j, label in enumerate(s.labels):
            values[r, labels.index(label), pos] = s.values[j]
    per_series = 1 if options.band or len(ranks) == 1 else len(ranks)
    kept, notes = _keep(labels, values, max(1, options.max_lines // per_series))
    if not kept:
        raise ReplayError(f"Nothing to draw: {notes[0] if notes else 'no series.'}")
    sources = sorted({s.source for s in sets})
    where = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
    steps_of = ", ".join(_SOURCES.get(x, x) for x in sources)
    title = f"{_describe(options.metric, options.selection)} ({steps_of}, {where})"
    events = tuple(read_events(trace, rank=r) for r in ranks) if options.events else ()
    return Timeline(
        options.metric,
        "/".join(sources),
        tuple(ranks),
        steps,
        tuple(labels[i] for i in kept),
        values[:, kept, :],
        events,
        tuple(notes),
        title,
    )


def _scale(ax: Axes, values: np.ndarray, log: bool | None) -> None:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return
    positive = finite[finite > 0]
    if log is None:
        log = bool(positive.size == finite.size and positive.max() >= LOG_RATIO * positive.min())
    if not log:
        return
    if positive.size == finite.size:
        ax.set_yscale("log")
    else:  # zeros or negatives: linear around 0
        small = np.abs(finite[finite != 0])
        ax.set_yscale("symlog", linthresh=float(small.min()) if small.size else 1.0)


def timeline_figure(tl: Timeline, options: TimelineOptions | None = None) -> Figure:
    """The figure of ``tl``: a line per series (and rank), or with ``options.band`` a band over
    the ranks per series; the events as dashed lines (gid ``event:KIND``)."""
    options = options or TimelineOptions(metric=tl.metric)
    fig = new_figure()
    ax = fig.add_subplot()
    starts = buckets(len(tl.steps))
    band = options.band and len(tl.ranks) > 1
    for i, label in enumerate(tl.labels):
        color = line_color(i)
        if band:
            v = tl.values[:, i, :]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi, med = np.nanmin(v, axis=0), np.nanmax(v, axis=0), np.nanmedian(v, axis=0)
            x, lo2 = decimate(tl.steps, lo, starts)
            _, hi2 = decimate(tl.steps, hi, starts)
            ax.fill_between(x, lo2, hi2, color=color, alpha=0.25, linewidth=0)
            ax.plot(
                *decimate(tl.steps, med, starts), color=color, linewidth=1.2, label=f"{label} (median)"
            )
            continue
        for r, rank in enumerate(tl.ranks):
            name = label if len(tl.ranks) == 1 else f"{label} (rank {rank})"
            x, y = decimate(tl.steps, tl.values[r, i], starts)
            ax.plot(x, y, color=color, linestyle=_STYLES[r % len(_STYLES)], linewidth=1.1, label=name)
    _scale(ax, tl.values, options.log)
    draw_events(ax, tl.events)
    ax.set_xlabel("step")
    ax.set_ylabel(tl.metric if tl.metric not in METRICS else f"{tl.metric}: {METRICS[tl.metric]}")
    ax.set_title(tl.title, fontsize=10)
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def _legend(ax: Axes) -> None:
    handles, names = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            names,
            fontsize="small",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            ncols=1 if len(names) <= 24 else 2,
        )
