"""Statistic series of one rank file, for :mod:`tracefmt.columns`: from full steps (``steps`` and
``stats``) and from light steps (``light_steps`` and ``light_stats``).

Full steps: which tensors make each series is resolved once per distinct graph
(:func:`~tracefmt._colpick.pick_graph`); then, block by block, the members' rows are gathered
from the block's stats rows with one fancy index (row ``stats_start + tensor`` of each step) and
reduced to one number per series and step (:func:`~tracefmt._colreduce.reduce`).  Light steps:
each distinct (name, kind) of the light rows is resolved once to the series it belongs to
(:func:`~tracefmt._colpick.light_labels`).  Only the step index and the stats tables are read,
and the first step of each graph's stats (to tell the unmeasured views).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tracefmt import _layout as L
from tracefmt._colpick import light_labels, pick_graph
from tracefmt._colread import index_blocks, strings_of
from tracefmt._colreduce import FIELDS, Observations, reduce
from tracefmt._ranges import checked_graph_index, segment_index
from tracefmt._rankfile import RankFile
from tracefmt.errors import TraceFormatError
from tracefmt.light import LightKind
from tracefmt.progress import ProgressFn

__all__ = ["Series", "checked_graphs", "full_series", "light_series"]

_KINDS = {int(k): k for k in LightKind}


class Series(NamedTuple):
    """Step numbers (``n``), series labels (``k``) and values (``k x n``, NaN: not recorded)."""

    steps: np.ndarray
    labels: list[str]
    values: np.ndarray


def _empty(steps: np.ndarray) -> Series:
    return Series(steps.astype(np.int64), [], np.zeros((0, len(steps))))


def checked_graphs(rf: RankFile, rows: np.ndarray, *, stats: bool = True) -> np.ndarray:
    """The graph row of each step of ``rows``, checked against ``graphs`` (and with ``stats``,
    each step's stats count against its graph's tensors)."""
    graphs = rf._rows(L.GRAPHS, 0, rf.length(L.GRAPHS))
    gi = checked_graph_index(rf, rows, len(graphs))
    bad = (
        np.flatnonzero(rows["stats_count"] != graphs["tensor_count"][gi])
        if stats
        else np.zeros(0, np.int64)
    )
    if len(bad):
        k = int(bad[0])
        raise TraceFormatError(
            f"{rf.path}, step {int(rows['step'][k])}: {int(rows['stats_count'][k])} stats rows for "
            f"a graph of {int(graphs['tensor_count'][gi[k]])} tensors."
        )
    return gi


class _Members(NamedTuple):
    local: np.ndarray  #: graph-local tensor of each member
    series: np.ndarray  #: its series id
    numel: np.ndarray  #: its number of elements


def full_series(
    rf: RankFile,
    metric: str,
    *,
    module: str | None,
    tensor: str | None,
    phase: str | None,
    progress: ProgressFn | None = None,
) -> Series:
    """``metric`` (a key of :data:`~tracefmt._colreduce.FIELDS`) of the selected series over the
    full steps of ``rf`` that have statistics."""
    index = rf.step_rows()
    rows = index[index["stats_count"] > 0]
    if not len(rows):
        return _empty(rows["step"])
    g = checked_graphs(rf, rows)
    labels: dict[str, int] = {}
    members: dict[int, _Members] = {}
    for gi in np.unique(g).tolist():
        k = int(np.flatnonzero(g == gi)[0])
        step = int(rows["step"][k])
        data = rf._graph(gi, step)
        flags = rf._rows(L.STATS, int(rows["stats_start"][k]), int(rows["stats_count"][k]), step)
        picks = pick_graph(
            data.ops, data.metas, module=module, tensor=tensor, phase=phase, measured=flags["flags"] != 0
        )
        numel = np.array([float(m.numel) for m in data.metas])
        local = [p.members for p in picks]
        series = [np.full(len(p.members), labels.setdefault(p.label, len(labels))) for p in picks]
        cat = np.concatenate(local) if local else np.zeros(0, dtype=np.int64)
        members[gi] = _Members(cat, np.concatenate(series) if series else cat, numel[cat])
    if not labels:
        return _empty(rows["step"])
    k_series, fields = len(labels), FIELDS[metric]
    values = np.full((k_series, len(rows)), np.nan)
    for block in index_blocks(rf, L.STATS, rows, ("stats_start", "stats_count"), progress):
        nb = block.end - block.begin
        gb = g[block.begin : block.end]
        at: list[np.ndarray] = []  # the members' rows in the block, their keys and sizes
        keys: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        for gi in np.unique(gb).tolist():
            m = members[gi]
            if not len(m.local):
                continue
            pos = np.flatnonzero(gb == gi)
            at.append((block.offsets[pos][:, None] + m.local[None, :]).ravel())
            keys.append((m.series[None, :] * nb + pos[:, None]).ravel())
            sizes.append(np.tile(m.numel, len(pos)))
        if not at:
            continue
        r = block.rows[np.concatenate(at)]
        obs = Observations(
            np.concatenate(keys), r["flags"], {f: r[f] for f in fields}, np.concatenate(sizes)
        )
        values[:, block.begin : block.end] = reduce(metric, obs, k_series * nb).reshape(k_series, nb)
    return Series(rows["step"].astype(np.int64), list(labels), values)


def light_series(
    rf: RankFile,
    metric: str,
    *,
    module: str | None,
    tensor: str | None,
    kinds: frozenset[LightKind],
    suffix: bool = False,
    progress: ProgressFn | None = None,
) -> Series:
    """``metric`` of the selected series over the light steps of ``rf``, from its light rows of
    ``kinds`` (``suffix``: label a row selected by tensor ``name [kind]``)."""
    index = rf.light_rows()
    labels: dict[str, int] = {}
    columns: list[np.ndarray] = []
    resolved: dict[int, np.ndarray] = {}  # name id * 16 + kind -> its series ids
    wanted = np.array(sorted(int(k) for k in kinds))
    fields = FIELDS[metric]
    for block in index_blocks(rf, L.LIGHT_STATS, index, ("stats_start", "stats_count"), progress):
        nb = block.end - block.begin
        rows, owner = block.flat(index["stats_count"][block.begin : block.end])
        unknown = ~np.isin(rows["kind"], list(_KINDS))
        if unknown.any():
            step = int(index["step"][block.begin + owner[np.flatnonzero(unknown)[0]]])
            raise TraceFormatError(
                f"{rf.path}, light step {step}: a light row has kind "
                f"{int(rows['kind'][unknown][0])}, which this tracefmt does not know."
            )
        keep = np.isin(rows["kind"], wanted)
        rows, owner = rows[keep], owner[keep]
        codes = rows["name"].astype(np.int64) * 16 + rows["kind"]
        uniq, inverse = np.unique(codes, return_inverse=True)
        names = strings_of(rf, uniq // 16, "light row's name")
        for code in uniq.tolist():
            if code not in resolved:
                found = light_labels(
                    names[code // 16], _KINDS[code % 16], module=module, tensor=tensor, suffix=suffix
                )
                for label in found:
                    if label not in labels:
                        labels[label] = len(labels)
                        columns.append(np.full(len(index), np.nan))
                resolved[code] = np.array([labels[x] for x in found], dtype=np.int64)
        lists = [resolved[c] for c in uniq.tolist()]
        lens = np.array([len(x) for x in lists], dtype=np.int64)
        if not lens.sum():
            continue
        cat = np.concatenate(lists)
        rep = lens[inverse.reshape(-1)]
        series = cat[segment_index((np.cumsum(lens) - lens)[inverse.reshape(-1)], rep)]
        r = rows[np.repeat(np.arange(len(rows)), rep)]
        key = series * nb + np.repeat(owner, rep)
        obs = Observations(key, r["flags"], {f: r[f] for f in fields}, r["numel"])
        out = reduce(metric, obs, len(labels) * nb).reshape(len(labels), nb)
        for s in np.unique(series).tolist():
            columns[s][block.begin : block.end] = out[s]
    if not labels:
        return _empty(index["step"])
    found = list(labels)  # in the order found; the series are given sorted by label
    ranked = sorted(range(len(found)), key=found.__getitem__)
    return Series(
        index["step"].astype(np.int64),
        [found[i] for i in ranked],
        np.vstack([columns[i] for i in ranked]),
    )
