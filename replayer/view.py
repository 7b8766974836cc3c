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
from dataclasses import dataclass
from pathlib import Path

from replayer.export import (
    MappedStep,
    build_model,
    load_selection,
    map_step,
    provenance_metadata,
)
from replayer.modules import module_paths, top_level_count
from tracefmt.reader import Trace

#: The most top-level nodes the default view shows.
NODE_BUDGET = 400
#: Above this many bytes of recorded values the view leaves values out (Netron loads it all).
VALUES_BUDGET = 256 * 2**20


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


def prepare(trace: Trace, step: int, *, rank: int | None = None, phase: str = "forward",
            module: str | None = None, depth: int | None = None, auto_depth: bool = True,
            with_values: bool | None = None) -> tuple[bytes, int, int | None, int, str]:
    """The model bytes to serve, its top-level node count, the depth used, the op count and a
    message on what is shown and how to see more."""
    loaded, ops = load_selection(trace, step, rank, phase, module)
    mapped = map_step(loaded, ops)
    if depth is None and auto_depth:
        depth = choose_depth(mapped)
    if with_values is None:
        from tracefmt.dtypes import DTYPE_INFO

        size = sum(t.meta.numel * DTYPE_INFO[t.dtype].itemsize for t in loaded.tensors
                   if t.has_values)
        with_values = size <= VALUES_BUDGET
    model, stats = build_model(mapped, with_values=with_values, depth=depth,
                               split_saved=phase == "all", metadata=provenance_metadata(trace,
                                                                                        phase),
                               graph_name=f"step {step} rank {loaded.rank} {phase}")
    nodes = len(model.graph.node)
    if depth is None:
        message = f"{phase}: {stats.ops} ops as {nodes} nodes, flat."
    else:
        message = (f"{phase}: {stats.ops} ops; modules below depth {depth} are folded into "
                   f"{stats.modules} Module nodes ({nodes} nodes at the top level). Click + on a "
                   "Module node to expand it in place, or pass --depth N (larger shows more; "
                   "--flat shows every op).")
    if phase != "all":
        message += " Other phases: --phase backward|optimizer|all."
    if not with_values:
        message += " Recorded values were left out (too large to serve); shapes remain."
    return model.SerializeToString(), nodes, depth, stats.ops, message


def serve(data: bytes, name: str, *, port: int = 0, browse: bool = False) -> tuple[str, int]:
    """Serve model bytes with netron on 127.0.0.1; returns (host, port)."""
    import netron

    logging.getLogger("netron.server").setLevel(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="replayer-view-"))
    host, bound = netron.serve(str(folder / name), data=data, address=("127.0.0.1", port),
                               browse=browse)
    return str(host), int(bound)


def serve_step(trace: Trace, step: int, *, rank: int | None = None, phase: str = "forward",
               module: str | None = None, depth: int | None = None, auto_depth: bool = True,
               port: int = 0, browse: bool = False) -> Served:
    """Export and serve one step (see the module docstring)."""
    data, nodes, used, ops, message = prepare(trace, step, rank=rank, phase=phase, module=module,
                                              depth=depth, auto_depth=auto_depth)
    name = f"step{step}-{phase}.onnx"
    host, bound = serve(data, name, port=port, browse=browse)
    return Served(f"http://{host}:{bound}/", host, bound, nodes, ops, used, message, name)


def stop(host: str, port: int, timeout: float = 10.0) -> None:
    """Stop a server started by :func:`serve` and wait until it is down (netron's stop is
    asynchronous)."""
    import netron

    netron.stop((host, port))
    deadline = time.monotonic() + timeout
    while netron.status((host, port)) and time.monotonic() < deadline:
        time.sleep(0.05)
