"""``replayer dist``: how a tensor's values were distributed, step after step, from the histograms
the recorder wrote (``record(..., hist_bins=N)``, spec section 5.10), drawn the two ways
TensorBoard's histogram and distribution dashboards do:

* ``ridge`` (TensorBoard's offset view): one curve per recorded step (at most ``max_curves``,
  evenly spread, the event steps among them), offset upwards from the newest to the oldest,
  newer steps in front, each event a dashed line at its step's place;
* ``bands``: percentiles over the steps, 0-100, 7-93 and 16-84 as nested bands and the median
  as a line (TensorBoard's distribution dashboard), the run's events marked.

Percentiles come from the histogram (:func:`percentiles`): linear within the bin where the
cumulative count crosses them, exact at 0 and 100 (the recorded range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from replayer.errors import ReplayError
from replayer.plots.figures import EVENT_COLORS, buckets, decimate, draw_events, new_figure
from tracefmt.columns import HistSeries, RunEvents, Selection, read_events, read_histograms
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace

__all__ = ["PERCENTILES", "VIEWS", "Dist", "DistOptions", "dist_figure", "percentiles", "read_dist"]

#: The percentiles of the bands view (TensorBoard's distribution dashboard).
PERCENTILES = (0, 7, 16, 50, 84, 93, 100)
VIEWS = ("ridge", "bands")
_BAND_COLOR = "#1f77b4"


@dataclass(frozen=True)
class DistOptions:
    """The tensors (``selection``, by tensor glob: default every measured tensor) of ``rank``
    (None: the lowest), drawn as ``view`` (``ridge`` or ``bands``); at most ``max_tensors``
    panels and, in the ridge view, ``max_curves`` curves each; ``events``: mark the run's."""

    selection: Selection = field(default_factory=lambda: Selection(tensor="*"))
    rank: int | None = None
    view: str = "ridge"
    max_tensors: int = 6
    max_curves: int = 40
    events: bool = True

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ReplayError(f"Unknown view {self.view!r}; use one of {', '.join(VIEWS)}.")
        if self.max_tensors < 1 or self.max_curves < 2:
            raise ReplayError("max_tensors must be at least 1 and max_curves at least 2.")


@dataclass(frozen=True)
class Dist:
    """The histogram series drawn (one panel each), the rank's events, and notes on what was
    left out."""

    rank: int
    series: tuple[HistSeries, ...]
    events: RunEvents | None
    notes: tuple[str, ...]


def read_dist(trace: Trace, options: DistOptions, *, progress: ProgressFn | None = None) -> Dist:
    """Read what :func:`dist_figure` draws."""
    rank = trace.rank_file(options.rank).rank
    found = read_histograms(trace, options.selection, rank=rank, progress=progress)
    notes = []
    if len(found) > options.max_tensors:
        notes.append(
            f"Showing {options.max_tensors} of the {len(found)} tensors with histograms "
            f"({', '.join(h.label for h in found[: options.max_tensors])}); narrow --tensor or "
            "raise --max-tensors to see the others."
        )
    events = read_events(trace, rank=rank) if options.events else None
    return Dist(rank, tuple(found[: options.max_tensors]), events, tuple(notes))


def percentiles(h: HistSeries, qs: tuple[float, ...] = PERCENTILES) -> np.ndarray:
    """``qs`` (in 0..100) of each step's histogram, shape ``(len(qs), steps)``: linear within
    the bin where the cumulative count reaches ``q`` percent of the total; 0 and 100 are the
    recorded ``lo`` and ``hi``; NaN for a histogram with no count."""
    counts = h.counts.astype(np.float64)
    n, bins = counts.shape
    total = counts.sum(axis=1)
    cum = np.cumsum(counts, axis=1)
    width = (h.hi - h.lo) / bins
    out = np.empty((len(qs), n))
    rows = np.arange(n)
    for i, q in enumerate(qs):
        target = total * (q / 100.0)
        b = np.minimum((cum < target[:, None]).sum(axis=1), bins - 1)
        before = np.where(b > 0, cum[rows, np.maximum(b - 1, 0)], 0.0)
        inside = counts[rows, b]
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.clip(np.where(inside > 0, (target - before) / inside, 0.0), 0.0, 1.0)
        out[i] = h.lo + (b + frac) * width
        if q <= 0:
            out[i] = h.lo
        elif q >= 100:
            out[i] = h.hi
    out[:, total <= 0] = np.nan
    return out


def _event_kinds(events: RunEvents | None) -> dict[int, str]:
    """Step -> the kinds of the events there (joined by ", ")."""
    if events is None:
        return {}
    out: dict[int, list[str]] = {}
    for step, code in zip(events.steps.tolist(), events.kinds.tolist(), strict=True):
        kinds = out.setdefault(int(step), [])
        if events.kind_labels[code] not in kinds:
            kinds.append(events.kind_labels[code])
    return {step: ", ".join(kinds) for step, kinds in out.items()}


def _ridge(ax: Axes, h: HistSeries, events: RunEvents | None, max_curves: int) -> None:
    """Curves of the chosen steps, the oldest at the top, the newest in front at the bottom;
    an event at its step's curve, or between the curves around its step (beyond the first or
    last curve: one spacing past it)."""
    n, bins = h.counts.shape
    marked = _event_kinds(events)
    chosen = set(np.unique(np.linspace(0, n - 1, min(n, max_curves)).round().astype(np.int64)).tolist())
    chosen |= {int(i) for i in np.flatnonzero(np.isin(h.steps, list(marked)))}
    order = sorted(chosen)
    cmap = colormaps["viridis"]
    spacing = 0.45
    m = len(order)
    bases = (m - 1 - np.arange(m)) * spacing
    ticks: list[tuple[float, str]] = []
    for j, k in enumerate(order):
        c = h.counts[k].astype(np.float64)
        y = c / c.max() if c.max() > 0 else c
        edges = (
            np.linspace(h.lo[k], h.hi[k], bins + 1)
            if h.hi[k] > h.lo[k]
            else h.lo[k] + np.arange(bins + 1) / bins
        )
        x = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
        yy = np.concatenate([[0.0], y, [0.0]])
        color = cmap(j / max(m - 1, 1))
        ax.fill_between(
            x,
            bases[j],
            bases[j] + yy,
            facecolor=color,
            edgecolor="white",
            linewidth=0.6,
            alpha=0.95,
            zorder=j,
        )
        if j in (0, m - 1) or j % max(1, m // 8) == 0:
            ticks.append((float(bases[j]), str(int(h.steps[k]))))
    drawn = h.steps[order].astype(np.float64)
    for step, kinds in sorted(marked.items()):
        at = float(np.interp(step, drawn, bases, left=bases[0] + spacing, right=bases[-1] - spacing))
        kind = kinds.split(", ")[0]
        line = ax.hlines(
            [at],
            0,
            1,
            transform=ax.get_yaxis_transform(),
            colors=EVENT_COLORS.get(kind, "#7f7f7f"),
            linestyles="--",
            linewidth=1.6,
            zorder=m + 1,
            label=kind,
        )
        line.set_gid(f"event:{kind}")
        ticks = [t for t in ticks if abs(t[0] - at) > spacing / 2]
        ticks.append((at, f"{step} ({kinds})"))
    ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7)
    ax.set_ylabel("step")
    ax.set_xlabel("value")


def _bands(ax: Axes, h: HistSeries, events: RunEvents | None) -> None:
    p = percentiles(h)
    starts = buckets(len(h.steps))
    pairs = [(0, 6, 0.18), (1, 5, 0.3), (2, 4, 0.45)]
    for lo_i, hi_i, alpha in pairs:
        x, lo = decimate(h.steps, p[lo_i], starts)
        _, hi = decimate(h.steps, p[hi_i], starts)
        q = f"{PERCENTILES[lo_i]}-{PERCENTILES[hi_i]}%"
        ax.fill_between(x, lo, hi, color=_BAND_COLOR, alpha=alpha, linewidth=0, label=q)
    ax.plot(*decimate(h.steps, p[3], starts), color=_BAND_COLOR, linewidth=1.2, label="median")
    if events is not None:
        draw_events(ax, [events])
    ax.set_xlabel("step")
    ax.set_ylabel("value")


def dist_figure(d: Dist, options: DistOptions | None = None) -> Figure:
    """One panel per tensor of ``d``, in ``options.view``; event steps marked (gid
    ``event:KIND``: dashed lines at the step, in the ridge view at its curve)."""
    options = options or DistOptions()
    if not d.series:
        raise ReplayError("No histograms to draw.")
    k = len(d.series)
    cols = 1 if k == 1 else 2
    rows = math.ceil(k / cols)
    fig = new_figure(11.0 if cols == 2 else 9.0, (5.5 if options.view == "ridge" else 4.0) * rows)
    for i, h in enumerate(d.series):
        ax = fig.add_subplot(rows, cols, i + 1)
        if options.view == "ridge":
            _ridge(ax, h, d.events, options.max_curves)
        else:
            _bands(ax, h, d.events)
        steps = f"{len(h.steps)} step{'s' if len(h.steps) != 1 else ''}"
        ax.set_title(f"{h.label} (rank {d.rank}, {steps})", fontsize=9)
        ax.grid(alpha=0.25)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            unique = dict(zip(names, handles, strict=True))
            ax.legend(unique.values(), unique.keys(), fontsize="x-small", loc="upper right")
    return fig
