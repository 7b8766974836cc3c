"""``replayer view``: serve one step's ONNX model with Netron on 127.0.0.1.

Defaults keep a large step usable: one phase (forward), and modules folded below the deepest
depth whose top level still has at most :data:`NODE_BUDGET` nodes (Netron lays out about 1,000
nodes in 2 s, but forward+backward graphs of a few thousand stall or crash its tab).  The model is
served from memory; Netron also serves files next to the model's path, so that path is a fresh,
empty temporary directory.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import onnx

from replayer.diff.results import OpDivergence, RunDiff, StepDiff, StructuralChange
from replayer.errors import ReplayError
from replayer.export.build import ExportOptions, ModelLabels, build_model
from replayer.export.mapping import MappedStep, load_selection, map_step
from replayer.export.modules import module_paths, top_level_count
from tracefmt.reader import Trace

#: The most top-level nodes the default view shows.
NODE_BUDGET = 400
#: Above this many bytes of recorded values the view leaves values out (Netron loads it all).
VALUES_BUDGET = 256 * 2**20
#: What :func:`mark_divergent` puts before a divergent node's name.
DIVERGED_PREFIX = "\u2260 "
#: The metadata key (value ``"true"``) of a divergent node.
DIVERGED_KEY = "tracefmt.diverged"


@dataclass(frozen=True)
class Served:
    """A model being served: where, and what it shows."""

    url: str
    host: str
    port: int
    nodes: int
    ops: int
    depth: int | None
    message: str
    path: str


class Prepared(NamedTuple):
    """What :func:`prepare` made: the model to serve and what it shows."""

    data: bytes
    #: Nodes at the model's top level.
    nodes: int
    #: The depth modules are folded below (``None``: flat).
    depth: int | None
    ops: int
    #: What is shown and how to see more, for the user.
    message: str


def choose_depth(mapped: MappedStep, budget: int = NODE_BUDGET) -> int | None:
    """``None`` (flat) when the whole selection fits ``budget`` top-level nodes, else the deepest
    depth that fits, else 0."""
    flat = sum(len(u.nodes) for u in mapped.units)
    if flat <= budget:
        return None
    tensors = mapped.step.tensors
    deepest = max((len(p) for p in module_paths(mapped.units, tensors)), default=0)
    for depth in range(deepest, -1, -1):
        if top_level_count(mapped.units, tensors, depth) <= budget:
            return depth
    return 0


def _node_op(node: onnx.NodeProto) -> int | None:
    for prop in node.metadata_props:
        if prop.key == "tracefmt.op":
            return int(prop.value)
    return None


def _mark(node: onnx.NodeProto, summary: str) -> None:
    if any(p.key == DIVERGED_KEY for p in node.metadata_props):
        return  # marked already (mark_divergent called twice)
    node.name = DIVERGED_PREFIX + node.name
    node.doc_string = (
        f"DIVERGED: {summary}\n{node.doc_string}" if node.doc_string else f"DIVERGED: {summary}"
    )
    node.metadata_props.add(key=DIVERGED_KEY, value="true")
    node.metadata_props.add(key="tracefmt.divergence", value=summary)


def _mark_graph(graph: onnx.GraphProto, ops: set[int], notes: Mapping[int, str]) -> set[int]:
    """Mark the nodes of ``graph`` (and of Module bodies in it); the divergent ops found."""
    found: set[int] = set()
    for node in graph.node:
        inner: set[int] = set()
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                inner |= _mark_graph(attr.g, ops, notes)
        op = _node_op(node)
        if op is not None and op in ops:
            _mark(node, notes.get(op, "diverged"))
            found.add(op)
        elif inner:
            first = min(inner)
            _mark(
                node,
                f"{len(inner)} divergent ops inside, the first op {first}: "
                f"{notes.get(first, 'diverged')}",
            )
        found |= inner
    return found


def mark_divergent(
    model: onnx.ModelProto, ops: Iterable[int], notes: Mapping[int, str] | None = None
) -> set[int]:
    """Mark, in place, the nodes of ``model`` made from the ops ``ops`` (op indices of its step,
    e.g. :func:`replayer.diff.divergent_ops`), and the Module nodes that contain one.

    A marked node's name gets :data:`DIVERGED_PREFIX`, its doc_string a first line
    ``DIVERGED: <note>`` and its metadata_props ``tracefmt.diverged=true`` and
    ``tracefmt.divergence=<note>``; ``notes`` maps op indices to a summary (the distance).
    Returns the op indices that were found in the model (ops outside the selection are not).
    """
    return _mark_graph(model.graph, set(ops), notes or {})


def _distance_text(op: OpDivergence) -> str:
    shown = [t for t in op.outputs if not t.inferred] or list(op.outputs)
    parts = [f"{op.status.name.lower()}" + ("" if op.inputs_match else " (inputs differ)")]
    if shown:
        t = max(shown, key=lambda x: x.score)
        where = t.name or f"t{t.b}"
        d = t.distance
        if d is None:
            parts.append(f"{where}: distance unknown")
        else:
            text = f"{where}: max_abs {d.max_abs:.3g} max_rel {d.max_rel:.3g}"
            if d.ulp is not None:
                text += f" ulp {d.ulp}"
            if d.count is not None:
                text += f" {d.count}/{d.numel} elements differ"
            if d.nonfinite:
                text += " nan/inf on one side"
            parts.append(text + f" (from {d.source})")
    return "; ".join(parts)


def _structural_text(c: StructuralChange) -> str:
    return f"structural ({c.kind}): {c.detail}" if c.detail else f"structural ({c.kind})"


def divergence_notes(result: StepDiff, side: str = "b") -> dict[int, str]:
    """A one-line summary (status and distance, or the structural change) for each divergent op
    of ``side``; its keys are :func:`replayer.diff.divergent_ops` of the same result."""
    notes: dict[int, str] = {}
    for d in result.divergences:
        notes[(d.a if side == "a" else d.b).index] = _distance_text(d)
    for c in result.structural:
        ref = c.a if side == "a" else c.b
        if ref is not None:
            old = notes.get(ref.index)
            notes[ref.index] = _structural_text(c) if old is None else f"{old}; {_structural_text(c)}"
    return notes


def prepare(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "forward",
    module: str | None = None,
    depth: int | None = None,
    auto_depth: bool = True,
    with_values: bool | None = None,
    diverged: Mapping[int, str] | None = None,
) -> Prepared:
    """The model of a step to serve, and what it shows (see the module docstring).

    ``depth=None`` with ``auto_depth`` chooses a depth (:func:`choose_depth`); ``with_values=None``
    keeps recorded values up to :data:`VALUES_BUDGET`.  ``diverged`` (op index -> summary) marks
    those ops' nodes with :func:`mark_divergent`."""
    loaded, ops = load_selection(trace, step, rank, phase, module)
    mapped = map_step(loaded, ops)
    if depth is None and auto_depth:
        depth = choose_depth(mapped)
    if with_values is None:
        from tracefmt.dtypes import DTYPE_INFO

        size = sum(t.meta.numel * DTYPE_INFO[t.dtype].itemsize for t in loaded.tensors if t.has_values)
        with_values = size <= VALUES_BUDGET
    options = ExportOptions(with_values=with_values, depth=depth, split_saved=phase == "all")
    model, stats = build_model(mapped, options, ModelLabels.of(trace, loaded, phase))
    marked: set[int] = set()
    if diverged is not None:
        marked = mark_divergent(model, diverged, diverged)
    nodes = len(model.graph.node)
    if depth is None:
        message = f"{phase}: {stats.ops} ops as {nodes} nodes, flat."
    else:
        message = (
            f"{phase}: {stats.ops} ops; modules below depth {depth} are folded into "
            f"{stats.modules} Module nodes ({nodes} nodes at the top level). Click + on a "
            "Module node to expand it in place, or pass --depth N (larger shows more; "
            "--flat shows every op)."
        )
    if phase != "all":
        message += " Other phases: --phase backward|optimizer|all."
    if not with_values:
        message += " Recorded values were left out (too large to serve); shapes remain."
    if diverged is not None:
        message += (
            f" Marked {len(marked)} divergent ops with '{DIVERGED_PREFIX.strip()}' "
            f"(of {len(diverged)} in the step)"
        )
        message += (
            "."
            if len(marked) == len(diverged)
            else ("; the rest are outside this selection (other phases or modules).")
        )
    return Prepared(model.SerializeToString(), nodes, depth, stats.ops, message)


def serve(data: bytes, name: str, *, port: int = 0, browse: bool = False) -> tuple[str, int]:
    """Serve model bytes with netron on 127.0.0.1; returns (host, port)."""
    import netron

    logging.getLogger("netron.server").setLevel(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="replayer-view-"))
    host, bound = netron.serve(str(folder / name), data=data, address=("127.0.0.1", port), browse=browse)
    return str(host), int(bound)


def _serve(shown: Prepared, name: str, *, port: int, browse: bool) -> Served:
    host, bound = serve(shown.data, name, port=port, browse=browse)
    url = f"http://{host}:{bound}/"
    return Served(url, host, bound, shown.nodes, shown.ops, shown.depth, shown.message, name)


def serve_step(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "forward",
    module: str | None = None,
    depth: int | None = None,
    auto_depth: bool = True,
    port: int = 0,
    browse: bool = False,
) -> Served:
    """Export and serve one step (see the module docstring)."""
    shown = prepare(
        trace, step, rank=rank, phase=phase, module=module, depth=depth, auto_depth=auto_depth
    )
    return _serve(shown, f"step{step}-{phase}.onnx", port=port, browse=browse)


@dataclass(frozen=True)
class DiffView:
    """What :func:`prepare_diff` found: side B's step to show and its divergent ops."""

    result: StepDiff | RunDiff
    path: str
    step: int
    rank: int
    notes: dict[int, str]
    origin: str | None


def prepare_diff(
    side_a: str,
    side_b: str,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    values: bool = True,
) -> DiffView:
    """Diff two ``TRACE[:STEP][@RANK]`` sides (:func:`replayer.diff.runs.diff_sides`) and pick
    side B's step to show: the diffed step, or for whole runs the first step that is not
    bit-identical (the first common step when none differs)."""
    from replayer.diff.runs import diff_sides, parse_side

    sa, sb = parse_side(side_a), parse_side(side_b)
    result = diff_sides(sa, sb, rtol=rtol, atol=atol, values=values)
    return diff_view(result, sb.path)


def diff_view(result: StepDiff | RunDiff, path_b: str) -> DiffView:
    """The :class:`DiffView` of a diff already made (``path_b``: side B's trace)."""
    from replayer.diff.core import divergent_ops

    d = result.diff if isinstance(result, RunDiff) else result
    if d is None:  # only a run diff with no common step has no step diff
        if not isinstance(result, RunDiff):
            raise ReplayError("The diff produced no step to show.")
        step = result.steps[0].step if result.steps else 0
        return DiffView(result, path_b, step, result.rank_b, {}, None)
    summaries = divergence_notes(d, "b")
    notes = {i: summaries.get(i, "diverged") for i in sorted(divergent_ops(d, "b"))}
    origin = d.origin.message if d.origin is not None else None
    return DiffView(result, path_b, d.step_b, d.rank_b, notes, origin)


def serve_diff(
    side_a: str,
    side_b: str,
    *,
    phase: str = "forward",
    module: str | None = None,
    depth: int | None = None,
    auto_depth: bool = True,
    port: int = 0,
    browse: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
) -> tuple[DiffView, Served]:
    """Diff two sides and serve side B's step with its divergent ops marked."""
    view = prepare_diff(side_a, side_b, rtol=rtol, atol=atol)
    served = serve_diff_step(
        view,
        phase=phase,
        module=module,
        depth=depth,
        auto_depth=auto_depth,
        port=port,
        browse=browse,
    )
    return view, served


def serve_diff_step(
    view: DiffView,
    *,
    phase: str = "forward",
    module: str | None = None,
    depth: int | None = None,
    auto_depth: bool = True,
    port: int = 0,
    browse: bool = False,
) -> Served:
    """Serve side B's step of a diff already made (:func:`prepare_diff`) with its divergent
    ops marked."""
    import tracefmt

    with tracefmt.open(view.path) as trace:
        shown = prepare(
            trace,
            view.step,
            rank=view.rank,
            phase=phase,
            module=module,
            depth=depth,
            auto_depth=auto_depth,
            diverged=view.notes,
        )
    return _serve(shown, f"step{view.step}-{phase}-diff.onnx", port=port, browse=browse)


def stop(host: str, port: int, timeout: float = 10.0) -> None:
    """Stop a server started by :func:`serve` and wait until it is down (netron's stop is
    asynchronous)."""
    import netron

    netron.stop((host, port))
    deadline = time.monotonic() + timeout
    while netron.status((host, port)) and time.monotonic() < deadline:
        time.sleep(0.05)
