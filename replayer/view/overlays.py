"""Node-data overlays for Model Explorer: recorded statistics, time and memory painted on nodes.

Each :class:`Overlay` is one of Model Explorer's node-data files (``{graph id: {"name", "results":
{node id: {"value", "bgColor"}}}}``); the page lists them and colours the graph by the one chosen,
with min/max/sum/avg roll-ups on collapsed layers and a sortable table.  Colours are computed here
on a log scale for the heavy-tailed quantities (norms, magnitudes, times, bytes span orders of
magnitude: on a linear scale one outlier would leave every other node the same colour), from
:data:`LOW` through :data:`MID` to :data:`HIGH`.  Non-finite statistics are left out of the norm
and magnitude overlays; the ``nonfinite`` overlay counts NaN and Inf elements per node instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tracefmt.model import OpNode, TensorStats
from tracefmt.reader import Step

__all__ = [
    "HIGH",
    "LOW",
    "MID",
    "NONFINITE",
    "NodeData",
    "Overlay",
    "colour",
    "node_id",
    "overlays_for",
    "scaled_colours",
    "tensor_node_id",
]

#: The colour of the smallest value, the middle of the scale and the largest.
LOW, MID, HIGH = "#f7fbff", "#fdae61", "#d7191c"
#: The colours of nodes without and with NaN/Inf elements in the ``nonfinite`` overlay.
FINITE, NONFINITE = "#e5f5e0", "#d7191c"


_GRADIENT = json.dumps(
    [{"stop": 0, "bgColor": LOW}, {"stop": 0.5, "bgColor": MID}, {"stop": 1, "bgColor": HIGH}],
    separators=(",", ":"),
)


@dataclass(frozen=True)
class NodeData:
    """An overlay as the page gets it: ``key`` names its file (``step.<key>.json``), ``name`` is
    what the page shows, ``text`` the node-data JSON (see :meth:`Overlay.to_json`)."""

    key: str
    name: str
    text: str

    def colours(self) -> dict[str, str]:
        """Each node's colour, from :attr:`text` (for tests and tools)."""
        data = json.loads(self.text)
        return {n: r["bgColor"] for g in data.values() for n, r in g["results"].items()}


@dataclass(frozen=True)
class Overlay:
    """One node-data file: ``key`` names its file (``step.<key>.json``), ``name`` is what the page
    shows, ``values`` and ``colours`` map node ids to a value and its background colour."""

    key: str
    name: str
    values: dict[str, float]
    colours: dict[str, str]

    def to_json(self, graph_of: str | Mapping[str, str]) -> str:
        """The node-data JSON of this overlay: for one graph (its id), or for the graphs of a
        collection (``graph_of``: the graph id of each node id; nodes not in it are left out).
        Values are finite (:func:`overlays_for` leaves non-finite ones out)."""
        results: dict[str, list[str]] = {}
        colours = self.colours
        single = graph_of if isinstance(graph_of, str) else None
        for node, value in self.values.items():
            gid = single if single is not None else graph_of.get(node)  # type: ignore[union-attr]
            if gid is None:
                continue
            if not math.isfinite(value):
                raise ValueError(f"Overlay {self.key!r} has a non-finite value for {node!r}.")
            results.setdefault(gid, []).append(
                f'"{node}":{{"value":{float(value)!r},"bgColor":"{colours[node]}"}}'
            )
        head = json.dumps({"name": self.name})[:-1]
        return (
            "{"
            + ",".join(
                f'{json.dumps(gid)}:{head},"results":{{' + ",".join(r) + f'}},"gradient":{_GRADIENT}}}'
                for gid, r in results.items()
            )
            + "}"
        )

    def rolled_up(self, members: Mapping[str, Sequence[str]]) -> Overlay:
        """This overlay with a value on each group node of ``members`` (group id: member node
        ids): the largest of its members' (``sum`` for counts), coloured as that member."""
        values, colours = dict(self.values), dict(self.colours)
        for group, nodes in members.items():
            known = [n for n in nodes if n in self.values]
            if not known:
                continue
            top = max(known, key=self.values.__getitem__)
            values[group] = (
                sum(self.values[n] for n in known) if self.key == "nonfinite" else self.values[top]
            )
            colours[group] = self.colours[top]
        return Overlay(self.key, self.name, values, colours)


def node_id(op: int) -> str:
    """The Model Explorer node id of op ``op``."""
    return f"op{op}"


def tensor_node_id(tensor: int) -> str:
    """The Model Explorer node id of the graph input tensor ``tensor``."""
    return f"t{tensor}"


def _rgb(text: str) -> tuple[int, int, int]:
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


def _mix(a: str, b: str, f: float) -> str:
    ra, rb = _rgb(a), _rgb(b)
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(ra, rb, strict=True))


def _ramp(f: float) -> str:
    return _mix(LOW, MID, f * 2) if f <= 0.5 else _mix(MID, HIGH, f * 2 - 1)


#: The scale in :data:`STEPS` + 1 colours (a node's colour is one of them).
STEPS = 64
_SCALE = tuple(_ramp(i / STEPS) for i in range(STEPS + 1))


def colour(f: float) -> str:
    """The colour at ``f`` (0: :data:`LOW`, 0.5: :data:`MID`, 1: :data:`HIGH`; clipped), one of
    ``STEPS + 1`` steps."""
    return _SCALE[round(min(max(f, 0.0), 1.0) * STEPS)]


def scaled_colours(values: dict[str, float], log: bool) -> dict[str, str]:
    """Each value's colour on a linear or log scale between the smallest and largest (as
    :func:`colour`, for all values at once)."""
    if not values:
        return {}
    v = np.fromiter(values.values(), dtype=np.float64, count=len(values))
    if log:
        positive = v > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            keys = np.where(positive, np.log10(np.where(positive, v, 1.0)), -np.inf)
    else:
        keys = v
    finite = np.isfinite(keys)
    lo, hi = (float(keys[finite].min()), float(keys[finite].max())) if finite.any() else (0.0, 0.0)
    span = hi - lo
    f = np.zeros(len(keys)) if span == 0 else np.where(finite, (keys - lo) / (span or 1.0), 0.0)
    steps = np.rint(np.clip(f, 0.0, 1.0) * STEPS).astype(np.int64).tolist()
    return dict(zip(values, map(_SCALE.__getitem__, steps), strict=True))


def _max_abs(st: TensorStats) -> float | None:
    if st.min is None or st.max is None:
        return None
    return max(abs(st.min), abs(st.max))


def overlays_for(
    step: Step,
    ops: Sequence[OpNode],
    inputs: Sequence[int],
    members: Mapping[str, Sequence[str]] | None = None,
) -> tuple[Overlay, ...]:
    """The overlays of a step's selected ``ops`` and its input tensor nodes ``inputs``: output
    norm and largest magnitude, NaN/Inf count, host and device time and memory, each present
    only when something in the selection recorded it; rolled up onto the group nodes
    ``members`` (a large step's part nodes, :mod:`replayer.view.parts`)."""
    tensors = step.tensors
    norm: dict[str, float] = {}
    max_abs: dict[str, float] = {}
    nonfinite: dict[str, float] = {}
    host: dict[str, float] = {}
    device: dict[str, float] = {}
    memory: dict[str, float] = {}

    def stats_of(node: str, outs: Sequence[int]) -> None:
        norms, mags, bad, counted = [], [], 0, False
        for t in outs:
            st = tensors[t].stats if 0 <= t < len(tensors) else None
            if st is None:
                continue
            if st.norm is not None and math.isfinite(st.norm):
                norms.append(st.norm)
            m = _max_abs(st)
            if m is not None and math.isfinite(m):
                mags.append(m)
            if st.nan is not None or st.inf is not None:
                counted = True
                bad += (st.nan or 0) + (st.inf or 0)
        if norms:
            norm[node] = norms[0]
        if mags:
            max_abs[node] = max(mags)
        if counted:
            nonfinite[node] = bad

    for t in inputs:
        stats_of(tensor_node_id(t), (t,))
    for op in ops:
        n = node_id(op.index)
        stats_of(n, op.outputs)
        if op.host_ns is not None:
            host[n] = op.host_ns / 1000
        if op.device_ns is not None:
            device[n] = op.device_ns / 1000
        if op.mem_bytes is not None:
            memory[n] = op.mem_bytes
    out = []
    for key, name, values, log in (
        ("norm", "output norm", norm, True),
        ("max_abs", "output max |x|", max_abs, True),
        ("host_time", "host time (us)", host, True),
        ("device_time", "device time (us)", device, True),
        ("memory", "memory (bytes)", memory, True),
    ):
        if values:
            out.append(Overlay(key, name, values, scaled_colours(values, log)))
    if nonfinite:
        colours = {n: NONFINITE if v > 0 else FINITE for n, v in nonfinite.items()}
        out.append(Overlay("nonfinite", "NaN+Inf count", nonfinite, colours))
    return tuple(o.rolled_up(members) for o in out) if members else tuple(out)
