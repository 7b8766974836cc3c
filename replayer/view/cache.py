"""Converted Model Explorer graphs kept on disk, so a step's second view starts at once.

Converting a 100,000-op step takes seconds (reading the step, building and encoding its nodes);
the result depends only on the rank file's contents and the conversion's options.  The cache is a
folder per conversion in the folder ``explorer`` of the cache directory (:func:`cache_dir`:
``$TRACEFMT_CACHE_DIR/explorer``; without it ``$XDG_CACHE_HOME/tracefmt/explorer``, else
``~/.cache/tracefmt/explorer``), named by a hash of the rank file's
resolved path, size and modification time, the step, rank, phase, module glob, layer limits,
the tracefmt version and :data:`CACHE_FORMAT`: a file written to (or replaced) is converted
again.  Each folder holds the graph JSON, the overlays' JSON and ``meta.json`` (counts, the graph
each node is in); nothing in it is executed, and a folder that does not parse is converted
again.  The :data:`KEEP` most recently used conversions are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from replayer.view.explorer import ExplorerGraph, export_step
from replayer.view.layers import LayerLimits
from replayer.view.overlays import NodeData
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace
from tracefmt.version import __version__ as TRACEFMT_VERSION

__all__ = ["CACHE_FORMAT", "KEEP", "CachedGraph", "cache_dir", "cached_export", "conversion_key"]

#: Changes whenever the converted JSON changes for the same input.
CACHE_FORMAT = 2
#: How many conversions the cache keeps.
KEEP = 8


class CachedGraph(NamedTuple):
    """What :func:`cached_export` returns: the graph, and whether it came from the cache."""

    graph: ExplorerGraph
    from_cache: bool


def cache_dir() -> Path:
    """Where converted graphs are kept (the folder may not exist yet): ``explorer`` in
    ``$TRACEFMT_CACHE_DIR``, else in ``$XDG_CACHE_HOME/tracefmt``, else in ``~/.cache/tracefmt``."""
    explicit = os.environ.get("TRACEFMT_CACHE_DIR")
    if explicit:
        return Path(explicit) / "explorer"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tracefmt" / "explorer"


def conversion_key(
    trace: Trace,
    step: int,
    *,
    rank: int | None,
    phase: str,
    module: str | None,
    limits: LayerLimits,
) -> str:
    """The cache key of one conversion (a hex digest)."""
    rf = trace.rank_file(rank)
    path = Path(rf.path).resolve()
    st = path.stat()
    parts = [
        str(path),
        st.st_size,
        st.st_mtime_ns,
        step,
        rf.rank,
        phase,
        module,
        dataclasses.astuple(limits),
        TRACEFMT_VERSION,
        CACHE_FORMAT,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _load(folder: Path) -> ExplorerGraph | None:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        text = (folder / "graph.json").read_text(encoding="utf-8")
        overlays = tuple(
            NodeData(
                key=str(o["key"]),
                name=str(o["name"]),
                text=(folder / f"overlay{i}.json").read_text("utf-8"),
            )
            for i, o in enumerate(meta["overlays"])
        )
        graph_of = {node: gid for gid, nodes in meta["graph_of"].items() for node in nodes}
        widest = (str(meta["widest"][0]), int(meta["widest"][1]))
        graph = ExplorerGraph(
            graph_id=str(meta["graph_id"]),
            text=text,
            overlays=overlays,
            ops=int(meta["ops"]),
            inputs=int(meta["inputs"]),
            widest=widest,
            phases=tuple(str(p) for p in meta["phases"]),
            graph_of=graph_of,
            graphs=int(meta["graphs"]),
            overview_nodes=int(meta["overview_nodes"]),
            focus=None if meta["focus"] is None else str(meta["focus"]),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # absent, half-written by an older version, or damaged: convert again
    with contextlib.suppress(OSError):
        os.utime(folder)  # most recently used
    return graph


def _store(root: Path, key: str, graph: ExplorerGraph) -> None:
    by_graph: dict[str, list[str]] = {}
    for node, gid in graph.graph_of.items():
        by_graph.setdefault(gid, []).append(node)
    meta: dict[str, Any] = {
        "graph_id": graph.graph_id,
        "ops": graph.ops,
        "inputs": graph.inputs,
        "widest": list(graph.widest),
        "phases": list(graph.phases),
        "graphs": graph.graphs,
        "overview_nodes": graph.overview_nodes,
        "overlays": [{"key": o.key, "name": o.name} for o in graph.overlays],
        "graph_of": by_graph,
        "focus": graph.focus,
    }
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        (tmp / "graph.json").write_text(graph.text, encoding="utf-8")
        for i, o in enumerate(graph.overlays):
            (tmp / f"overlay{i}.json").write_text(o.text, encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")  # last: complete
        target = root / key
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root)


def _prune(root: Path) -> None:
    """Keep the :data:`KEEP` most recently used conversions (and drop stale temporary folders)."""
    entries = []
    for child in root.iterdir():
        with contextlib.suppress(OSError):
            age = child.stat().st_mtime
            if child.name.startswith(".tmp-"):
                if time.time() - age > 3600:
                    shutil.rmtree(child, ignore_errors=True)
            elif child.is_dir():
                entries.append((age, child))
    for _, child in sorted(entries, reverse=True)[KEEP:]:
        shutil.rmtree(child, ignore_errors=True)


def cached_export(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "all",
    module: str | None = None,
    limits: LayerLimits | None = None,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
) -> CachedGraph:
    """:func:`~replayer.view.explorer.export_step`, from the cache when this conversion was
    done before; returns the graph and whether it came from the cache.  A cache that cannot be
    written (a read-only home) only costs the next view its conversion."""
    limits = limits or LayerLimits()
    if not use_cache:
        graph = export_step(
            trace, step, rank=rank, phase=phase, module=module, limits=limits, progress=progress
        )
        return CachedGraph(graph=graph, from_cache=False)
    root = cache_dir()
    key = conversion_key(trace, step, rank=rank, phase=phase, module=module, limits=limits)
    hit = _load(root / key)
    if hit is not None:
        return CachedGraph(graph=hit, from_cache=True)
    graph = export_step(
        trace, step, rank=rank, phase=phase, module=module, limits=limits, progress=progress
    )
    with contextlib.suppress(OSError):
        _store(root, key, graph)
    return CachedGraph(graph=graph, from_cache=False)
