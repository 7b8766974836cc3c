"""Synthetic data-parallel runs of many ranks, written with the tracefmt writer (no torch), for
``bench/ranks.py``.

Each rank records ``steps`` steps of the same DDP-like step (:func:`ddp_graph`): a broadcast of a
buffer, a forward pass of ``layers`` linear layers (``t``, ``addmm``, ``relu``), a loss, its
backward (five ops per layer), DDP's bucketed gradient all-reduce (per bucket of four layers a
``cat``, a ``div_`` by the world size, a ``c10d::allreduce_`` and a ``copy_`` back per gradient)
and an SGD-with-momentum update (three in-place ops per parameter): 271 ops and 338 tensors with
the default 16 layers.  Collective ops carry the format's ``"c10d"`` attributes (world group,
per-step ``seq``, a ``backend_seq`` that grows over the run, so every step has attribute
overrides, as the recorder writes them).

The capture level is graph + statistics (no values), the default of a long run.  The statistics
rows are synthesised, not computed from arrays: random moments, and fingerprints that are the same
on every rank for what data-parallel replicas share (parameters, momentum buffers, the broadcast
buffer, all-reduce outputs, gradients after the all-reduce) and differ for what is each rank's own
(its batch, activations, local gradients).  So ``replayer ranks`` finds the run consistent and
reads exactly what it would read of a real one.

Rank files, the ``distributed`` provenance and the ``run.json`` manifest come from the helpers of
``tests/tracefmt/multirank.py``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.tracefmt.multirank import RUN_ID, c10d_attrs, distributed, manifest
from tracefmt import (
    DType,
    GraphBuilder,
    Phase,
    Role,
    StatFlags,
    StepRecord,
    TraceWriter,
    rank_file_path,
    write_manifest,
)
from tracefmt.records import Graph, empty_op_stats, empty_stats
from tracefmt.writer import make_provenance

#: Layers per bucket of DDP's gradient all-reduce.
BUCKET_LAYERS = 4
#: Ranks per (pretend) node, for the hostnames in the provenance.
RANKS_PER_NODE = 8
_F32 = DType.FLOAT32
_FLAGS = int(StatFlags.MOMENTS | StatFlags.COUNTS | StatFlags.FINGERPRINT)


@dataclasses.dataclass(frozen=True)
class Shape:
    """The synthetic model: ``layers`` linear layers of ``width``, batches of ``batch``."""

    layers: int = 16
    width: int = 64
    batch: int = 8


class _Builder:
    """A graph under construction, with which tensors every replica shares."""

    def __init__(self) -> None:
        self.g = GraphBuilder()
        self.shared: list[int] = []

    def tensor(self, shape: tuple[int, ...], *, shared: bool = False, **kw: Any) -> int:
        t = self.g.add_tensor(_F32, shape, **kw)
        if shared:
            self.shared.append(t)
        return t

    def op(
        self,
        op: str,
        phase: Phase,
        module: str,
        inputs: list[int],
        shape: tuple[int, ...] | None,
        *,
        attrs: dict[str, Any] | None = None,
        shared: bool = False,
        **kw: Any,
    ) -> int:
        """Add op ``op`` writing one new tensor of ``shape`` (none for None); its index."""
        out = []
        if shape is not None:
            out = [self.tensor(shape, shared=shared, producer=self.g.num_ops, **kw)]
        self.g.add_op(op, phase=phase, module=module, inputs=inputs, outputs=out, attrs=attrs)
        return out[0] if out else -1


@dataclasses.dataclass(frozen=True)
class RankGraph:
    """A rank's step graph, the tensors replicas share, and its collectives' attributes (op
    index: attrs) with ``backend_seq`` counted from step 0."""

    graph: Graph
    shared: list[int]
    collectives: dict[int, dict[str, Any]]

    def at(self, step: int) -> Graph:
        """The graph of ``step``: the process group's sequence number has moved on by
        ``step`` times the collectives of a step (so each step has its own attributes)."""
        if step == 0:
            return self.graph
        n = len(self.collectives)
        attrs = {}
        for i, a in self.collectives.items():
            c10d = dict(a["c10d"], backend_seq=a["c10d"]["backend_seq"] + step * n)
            attrs[i] = {**a, "c10d": c10d}
        return self.graph.variant(attrs)


def ddp_graph(rank: int, world: int, shape: Shape = Shape()) -> RankGraph:
    """Rank ``rank``'s graph of step 0 (:meth:`RankGraph.at` gives the others)."""
    b = _Builder()
    d, n, fw, bw, opt = shape.width, shape.batch, Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER
    collectives: dict[int, dict[str, Any]] = {}

    def c10d(seq: int, first: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """The attributes of the collective added next (``first``: its own arguments)."""
        key = c10d_attrs(rank, world, seq=seq, backend_seq=seq, **kw)
        attrs = {**(first or {}), "async_op": False, "timeout": 1800000, "c10d": key}
        collectives[b.g.num_ops] = attrs
        return attrs

    flag = b.tensor((4,), shared=True, role=Role.BUFFER, name="norm.running")
    b.op(
        "c10d::broadcast_.default",
        fw,
        "",
        [flag],
        (4,),
        attrs=c10d(0, {"root_rank": 0}, reduce_op=None, root=0),
        shared=True,
        role=Role.BUFFER,
        name="norm.running",
        version=1,
    )
    names = [f"layers.{i}.{p}" for i in range(shape.layers) for p in ("weight", "bias")]
    params = {
        p: b.tensor((d, d) if p.endswith("weight") else (d,), shared=True, role=Role.PARAMETER, name=p)
        for p in names
    }
    h = b.tensor((n, d), role=Role.INPUT, name="input")
    acts = [h]
    for i in range(shape.layers):
        m = f"layers.{i}"
        wt = b.op("aten::t.default", fw, m, [params[f"{m}.weight"]], (d, d))
        y = b.op("aten::addmm.default", fw, m, [params[f"{m}.bias"], h, wt], (n, d))
        h = b.op("aten::relu.default", fw, m, [y], (n, d))
        acts.append(h)
    target = b.tensor((n, d), role=Role.INPUT, name="target")
    loss = b.op("aten::mse_loss.default", fw, "", [h, target], (), attrs={"reduction": 1})
    g = b.op("aten::mse_loss_backward.default", bw, "", [loss, h, target], (n, d))
    grads: dict[str, int] = {}
    for i in reversed(range(shape.layers)):
        m = f"layers.{i}"
        g = b.op("aten::threshold_backward.default", bw, m, [g, acts[i + 1]], (n, d))
        gt = b.op("aten::t.default", bw, m, [g], (d, n))
        gw = b.op("aten::mm.default", bw, m, [gt, acts[i]], (d, d), **_grad(f"{m}.weight"))
        grads[f"{m}.weight"] = gw
        gb = b.op("aten::sum.dim_IntList", bw, m, [g], (d,), **_grad(f"{m}.bias"))
        grads[f"{m}.bias"] = gb
        g = b.op("aten::mm.default", bw, m, [g, params[f"{m}.weight"]], (n, d))
    reduced: dict[str, int] = {}
    seq = 1
    for start in range(0, shape.layers, BUCKET_LAYERS):
        members = names[2 * start : 2 * (start + BUCKET_LAYERS)]
        size = sum(d * d if p.endswith("weight") else d for p in members)
        bucket = b.op("aten::cat.default", bw, "", [grads[p] for p in members], (size,), name="bucket")
        bucket = b.op(
            "aten::div_.Scalar",
            bw,
            "",
            [bucket],
            (size,),
            attrs={"other": world},
            name="bucket",
            version=1,
        )
        bucket = b.op(
            "c10d::allreduce_.default",
            bw,
            "",
            [bucket],
            (size,),
            attrs=c10d(seq),
            shared=True,
            name="bucket",
            version=2,
        )
        seq += 1
        for p in members:
            shape_p = (d, d) if p.endswith("weight") else (d,)
            reduced[p] = b.op(
                "aten::copy_.default",
                bw,
                "",
                [grads[p], bucket],
                shape_p,
                shared=True,
                role=Role.GRADIENT,
                name=f"{p}.grad",
                version=1,
            )
    for p in names:
        shape_p = (d, d) if p.endswith("weight") else (d,)
        buf = b.tensor(shape_p, shared=True, role=Role.OPTIMIZER_STATE, name=f"{p}.momentum_buffer")
        kw: dict[str, Any] = {
            "shared": True,
            "role": Role.OPTIMIZER_STATE,
            "name": f"{p}.momentum_buffer",
        }
        buf = b.op("aten::mul_.Scalar", opt, "", [buf], shape_p, attrs={"other": 0.9}, version=1, **kw)
        buf = b.op("aten::add_.Tensor", opt, "", [buf, reduced[p]], shape_p, version=2, **kw)
        b.op(
            "aten::add_.Tensor",
            opt,
            "",
            [params[p], buf],
            shape_p,
            attrs={"alpha": -0.01},
            shared=True,
            role=Role.PARAMETER,
            name=p,
            version=1,
        )
    return RankGraph(b.g.finish(), b.shared, collectives)


def _grad(param: str) -> dict[str, Any]:
    return {"role": Role.GRADIENT, "name": f"{param}.grad"}


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of ``x`` (uint64): well-spread synthetic fingerprints."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def step_record(ranked: RankGraph, rank: int, step: int, rng: np.random.Generator) -> StepRecord:
    """Rank ``rank``'s ``step`` of graph ``ranked``: synthetic statistics and op times."""
    graph, shared = ranked.at(step), ranked.shared
    n = graph.num_tensors
    stats = empty_stats(n)
    stats["flags"] = _FLAGS
    lo = rng.uniform(-2.0, -0.1, n)
    stats["min"], stats["max"], stats["mean"] = lo, -lo, rng.normal(0.0, 0.01, n)
    stats["std"] = rng.uniform(0.1, 1.0, n)
    stats["norm"] = stats["std"] * 8
    index = np.arange(n, dtype=np.uint64) + np.uint64(step << 20)
    own = _mix(index ^ np.uint64((rank + 1) << 40))
    own[shared] = _mix(index[shared])
    stats["fingerprint"] = own
    op_stats = empty_op_stats(graph.num_ops)
    op_stats["host_ns"] = rng.integers(2_000, 200_000, graph.num_ops)
    return StepRecord(
        step=step,
        graph=graph,
        stats=stats,
        op_stats=op_stats,
        wall_time=1.8e9 + step * 0.2,
        duration=0.15 + 0.01 * rng.random() + 0.002 * (rank % 7),
    )


def write_rank(run: Path, rank: int, world: int, steps: int, shape: Shape = Shape()) -> Path:
    """Write ``rank``'s file of a ``world``-rank run of ``steps`` steps."""
    rng = np.random.default_rng(rank)
    host = f"node{rank // RANKS_PER_NODE}"
    info = distributed(rank, world, host) | {
        "local_rank": rank % RANKS_PER_NODE,
        "local_world_size": RANKS_PER_NODE,
        "node_rank": rank // RANKS_PER_NODE,
    }
    provenance = dataclasses.replace(make_provenance(), extra={"distributed": info})
    path = rank_file_path(run, rank)
    with TraceWriter(
        path, run_id=RUN_ID, rank=rank, world_size=world, fsync=False, provenance=provenance
    ) as w:
        ranked = ddp_graph(rank, world, shape)
        for s in range(steps):
            w.write_step(step_record(ranked, rank, s, rng))
            if s % 10 == 9:
                w.flush()
    return path


def _write_rank(args: tuple[Path, int, int, int, Shape]) -> int:
    write_rank(*args)
    return args[1]


def write_run(
    run: Path,
    world: int,
    steps: int,
    shape: Shape = Shape(),
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """A run directory of ``world`` ranks with ``steps`` steps each and its manifest, written by
    ``workers`` processes; ``progress(done, world)`` after each rank."""
    run.mkdir(parents=True, exist_ok=True)
    jobs = [(run, r, world, steps, shape) for r in range(world)]
    done = 0
    if workers <= 1:
        for job in jobs:
            _write_rank(job)
            done += 1
            if progress is not None:
                progress(done, world)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_rank, jobs):
                done += 1
                if progress is not None:
                    progress(done, world)
    write_manifest(run, manifest(world))
    return run
