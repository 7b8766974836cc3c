"""``replayer timeline`` and ``replayer dist``: plots of a whole run, without torch.

* :func:`read_timeline` / :func:`timeline_figure` - a metric across every recorded step, one
  line per module or tensor, or a band over ranks, with the run's events marked;
* :func:`read_dist` / :func:`dist_figure` - the recorded histograms of tensors over the steps,
  as offset curves (a ridgeline) or percentile bands;
* :func:`write_figure` - a figure as PNG, SVG or a self-contained HTML page.

Figures are drawn on matplotlib's Agg canvas (no display); the numbers come from
:mod:`tracefmt.columns`.
"""

from replayer.plots.dist import Dist, DistOptions, dist_figure, percentiles, read_dist
from replayer.plots.figures import figure_svg, html_page, write_figure
from replayer.plots.timeline import Timeline, TimelineOptions, read_timeline, timeline_figure

__all__ = [
    "Dist",
    "DistOptions",
    "Timeline",
    "TimelineOptions",
    "dist_figure",
    "figure_svg",
    "html_page",
    "percentiles",
    "read_dist",
    "read_timeline",
    "timeline_figure",
    "write_figure",
]
