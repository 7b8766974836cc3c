"""Histogram series of one rank file (spec section 5.10), for :func:`tracefmt.columns.read_histograms`.

Each full step may hold a fixed-bin histogram per tensor (``hists``, recorded with
``record(..., hist_bins=N)``).  The tensors are selected as statistic series are by tensor
(:func:`~tracefmt._colpick.pick_graph`, once per graph); the ``hists`` rows of the steps are read
block by block (blocks bounded in bytes: a row holds ``hist_bins`` counts), each row's tensor is
checked against its graph.  A row whose range is not finite (or has ``lo > hi``: TF-HIST-001
refuses both; earlier recorders wrote ``inf..-inf`` for a tensor without a finite value) is
left out: it describes no finite value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracefmt import _layout as L
from tracefmt._colpick import pick_graph
from tracefmt._colread import index_blocks
from tracefmt._colstats import checked_graphs
from tracefmt._ranges import rf_dtype
from tracefmt._rankfile import RankFile
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.progress import ProgressFn

__all__ = ["HIST_HINT", "HistSeries", "rank_histograms"]

#: How to record histograms: what an error about a trace without them says.
HIST_HINT = (
    "record them with recorder.record(..., hist_bins=64) (a fixed-bin histogram of every "
    "measured tensor in each recorded full step)"
)
#: Bytes of ``hists`` rows one block reads at most (a step with more is a block alone).
_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class HistSeries:
    """One tensor's histograms over the steps that recorded one: at ``steps[i]``, ``counts[i]``
    of its finite values fell in equal-width bins from ``lo[i]`` to ``hi[i]``."""

    label: str
    rank: int
    steps: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    counts: np.ndarray


def rank_histograms(
    rf: RankFile,
    *,
    module: str | None,
    tensor: str | None,
    phase: str | None,
    progress: ProgressFn | None = None,
) -> list[HistSeries]:
    """The histogram series of ``rf``'s tensors selected by ``tensor`` (default every tensor),
    ``module`` and ``phase``, in label order."""
    if rf.hist_bins == 0:
        raise TraceError(f"{rf.path} has no histograms (its hist_bins is 0); {HIST_HINT}.")
    index = rf.step_rows()
    rows = index[index["hist_count"] > 0]
    if not len(rows):
        raise TraceError(f"{rf.path} has no step with histograms; {HIST_HINT}.")
    g = checked_graphs(rf, rows, stats=False)
    labels: dict[str, int] = {}
    tables: dict[int, np.ndarray] = {}  # graph -> series id of each graph tensor (-1: none)
    for gi in np.unique(g).tolist():
        step = int(rows["step"][int(np.flatnonzero(g == gi)[0])])
        data = rf._graph(gi, step)
        picks = pick_graph(
            data.ops, data.metas, module=module, tensor=tensor or "*", phase=phase, measured=None
        )
        table = np.full(len(data.metas), -1, dtype=np.int64)
        for p in picks:
            table[p.members] = labels.setdefault(p.label, len(labels))
        tables[gi] = table
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # series ids, step rows, hist rows
    itemsize = rf_dtype(rf, L.HISTS).itemsize
    blocks = index_blocks(
        rf, L.HISTS, rows, ("hist_start", "hist_count"), progress, max(1, _BLOCK_BYTES // itemsize)
    )
    for block in blocks:
        got, owner = block.flat(rows["hist_count"][block.begin : block.end])
        owner = owner + block.begin
        series = np.full(len(got), -1, dtype=np.int64)
        tensors = got["tensor"].astype(np.int64)
        for gi in np.unique(g[owner]).tolist():
            mine = g[owner] == gi
            table = tables[gi]
            bad = mine & (tensors >= len(table))
            if bad.any():
                k = int(owner[np.flatnonzero(bad)[0]])
                raise TraceFormatError(
                    f"{rf.path}, step {int(rows['step'][k])}: a histogram names tensor "
                    f"{int(tensors[bad][0])}, but the graph has {len(table)}."
                )
            series[mine] = table[tensors[mine]]
        keep = series >= 0
        found.append((series[keep], owner[keep], got[keep]))
    if not found or not labels:
        return []
    series = np.concatenate([f[0] for f in found])
    owner = np.concatenate([f[1] for f in found])
    got = np.concatenate([f[2] for f in found])
    ok = np.isfinite(got["lo"]) & np.isfinite(got["hi"]) & (got["lo"] <= got["hi"])
    series, owner, got = series[ok], owner[ok], got[ok]
    out = []
    for label, sid in sorted(labels.items()):
        at = np.flatnonzero(series == sid)
        if len(at):
            r = got[at]
            steps = rows["step"][owner[at]].astype(np.int64)
            out.append(
                HistSeries(
                    label, rf.rank, steps, r["lo"].astype(float), r["hi"].astype(float), r["counts"]
                )
            )
    return out
