"""Synthetic multi-rank runs written with the writer API: a run directory with one rank file per
rank, a ``run.json`` manifest, distributed provenance and collective ops (format 1.2).

Each rank's step is a tiny data-parallel step: a forward ``mm``, its gradient, a
``c10d::allreduce_.default`` of the gradient over the world group, a ``c10d::send.default`` to the
next rank, then the optimizer update.  Collective attrs follow the contract of spec section
"Collective and point-to-point ops".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt import (
    DType,
    GraphBuilder,
    Phase,
    ProcessGroupInfo,
    Role,
    RunManifest,
    StepRecord,
    TraceWriter,
    group_id,
    rank_file_path,
    write_manifest,
)
from tracefmt.records import Graph, empty_op_stats, empty_stats
from tracefmt.stats import tensor_stats
from tracefmt.writer import make_provenance

RUN_ID = "multirank-run"
#: A field value of :func:`dp_graph`'s ``c10d`` that removes the field.
DROP: Any = object()


def c10d_attrs(
    rank: int, world: int, *, kind: str = "collective", seq: int = 0, **changes: Any
) -> dict[str, Any]:
    """The ``"c10d"`` attrs object of an op of the world group issued by ``rank``."""
    ranks = list(range(world))
    data: dict[str, Any] = {
        "group": group_id("0", ranks),
        "group_name": "0",
        "group_ranks": ranks,
        "kind": kind,
        "seq": seq,
        "coalesced": None,
        "reduce_op": "SUM" if kind == "collective" else None,
        "root": None,
        "peer": (rank + 1) % world if kind == "p2p" else None,
        "rank": rank,
        "backend_seq": None,
    }
    data.update(changes)
    return data


def dp_graph(
    rank: int,
    world: int,
    *,
    backend_seq: int = 0,
    extra_allreduce: bool = False,
    c10d: dict[str, Any] | None = None,
) -> Graph:
    """One data-parallel step of ``rank``, with an all-reduce (and, with ``extra_allreduce``, a
    second one) and a send to the next rank.  ``c10d`` replaces fields of the all-reduces'
    ``"c10d"`` attributes (a value :data:`DROP` removes the field; ``{"c10d": DROP}`` the key)."""
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (4, 8), role=Role.INPUT, name="input")
    w = g.add_tensor(DType.FLOAT32, (8, 8), role=Role.PARAMETER, name="fc.weight")
    y = g.add_tensor(DType.FLOAT32, (4, 8), producer=g.num_ops)
    g.add_op("aten::mm.default", phase=Phase.FORWARD, module="fc", inputs=[x, w], outputs=[y])
    grad = g.add_tensor(
        DType.FLOAT32, (8, 8), role=Role.GRADIENT, name="fc.weight.grad", producer=g.num_ops
    )
    g.add_op("aten::mm.default", phase=Phase.BACKWARD, module="fc", inputs=[x, y], outputs=[grad])
    for seq in range(2 if extra_allreduce else 1):
        reduced = g.add_tensor(
            DType.FLOAT32,
            (8, 8),
            role=Role.GRADIENT,
            name="fc.weight.grad",
            producer=g.num_ops,
            version=seq + 1,
        )
        key = c10d_attrs(rank, world, seq=seq, backend_seq=backend_seq + seq)
        attrs: dict[str, Any] = {"async_op": False, "timeout": 1800000, "c10d": key}
        for field, value in (c10d or {}).items():
            target = attrs if field == "c10d" else key
            if value is DROP:
                del target[field]
            else:
                target[field] = value
        g.add_op(
            "c10d::allreduce_.default",
            phase=Phase.BACKWARD,
            inputs=[(grad, 0, 0)],
            outputs=[reduced],
            attrs=attrs,
        )
        grad = reduced
    g.add_op(
        "c10d::send.default",
        phase=Phase.BACKWARD,
        inputs=[(y, 0, 0)],
        attrs={"dst": (rank + 1) % world, "tag": 0, "c10d": c10d_attrs(rank, world, kind="p2p")},
    )
    new = g.add_tensor(
        DType.FLOAT32, (8, 8), role=Role.PARAMETER, name="fc.weight", producer=g.num_ops, version=1
    )
    g.add_op(
        "aten::add_.Tensor",
        phase=Phase.OPTIMIZER,
        inputs=[w, grad],
        outputs=[new],
        attrs={"alpha": -0.1},
    )
    return g.finish()


def dp_step(step: int, graph: Graph, rng: np.random.Generator) -> StepRecord:
    """Stats (no values) of every tensor of ``graph``, random."""
    stats = empty_stats(graph.num_tensors)
    for i, t in enumerate(graph.tensors):
        stats[i] = tensor_stats(rng.standard_normal(t.shape).astype(np.float32), t.dtype)
    op_stats = empty_op_stats(graph.num_ops)
    op_stats["host_ns"] = rng.integers(1_000, 100_000, graph.num_ops)
    return StepRecord(
        step=step, graph=graph, stats=stats, op_stats=op_stats, wall_time=1.7e9 + step, duration=0.1
    )


def distributed(rank: int, world: int, host: str = "node0") -> dict[str, Any]:
    """A rank's ``distributed`` provenance object, as a torchrun job on one node writes it."""
    return {
        "rank": rank,
        "world_size": world,
        "local_rank": rank,
        "local_world_size": world,
        "node_rank": 0,
        "hostname": host,
        "pid": 1000 + rank,
        "run_id_source": "TORCHELASTIC_RUN_ID",
        "backend": "gloo",
    }


def manifest(world: int, ranks: Iterable[int] | None = None) -> RunManifest:
    """The manifest rank 0 writes for a run of ``world`` ranks."""
    expected = tuple(range(world)) if ranks is None else tuple(ranks)
    everyone = tuple(range(world))
    return RunManifest(
        run_id=RUN_ID,
        world_size=world,
        expected_ranks=expected,
        run_id_source="TORCHELASTIC_RUN_ID",
        process_groups=(ProcessGroupInfo(group_id("0", everyone), "0", everyone, "gloo"),),
        created="2026-12-01T23:00:00Z",
        writer="tracefmt test",
    )


def write_rank(
    run: Path, rank: int, world: int, *, steps: int = 3, prov: dict[str, Any] | None = None, **kw: Any
) -> Path:
    """Write ``rank``'s file of a ``world``-rank run; ``kw`` go to :func:`dp_graph`."""
    rng = np.random.default_rng(rank)
    extra = {"distributed": distributed(rank, world) if prov is None else prov}
    provenance = dataclasses.replace(make_provenance(), extra=extra)
    path = rank_file_path(run, rank)
    with TraceWriter(
        path, run_id=RUN_ID, rank=rank, world_size=world, fsync=False, provenance=provenance
    ) as w:
        for s in range(steps):
            w.write_step(dp_step(s, dp_graph(rank, world, backend_seq=2 * s, **kw), rng))
            w.flush()
    return path


def write_run(
    run: Path,
    world: int = 3,
    *,
    steps: int = 3,
    ranks: Iterable[int] | None = None,
    with_manifest: bool = True,
) -> Path:
    """A run directory of ``world`` ranks; only ``ranks`` (default: all) write a file."""
    for rank in range(world) if ranks is None else ranks:
        write_rank(run, rank, world, steps=steps)
    if with_manifest:
        write_manifest(run, manifest(world))
    return run


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to ``keep`` of its bytes, as a full disk or a killed copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
