"""One process of ``bench/overhead_ddp.py``: the GPT example trained with the recorder on and off.

Started by ``bench/overhead_ddp.py``, not by hand: ``--mode single`` as one plain process,
``--mode ddp`` under ``torchrun`` (``DistributedDataParallel``, gloo, CPU).  Each process runs with
one torch thread and writes its measurements as JSON to ``OUT/result-rank-NNNNN.json``; the parent
combines the ranks (a step takes as long as its slowest rank).

Phases, all with the same seeded plan on every rank:

1. ``interleaved``: one recorder whose schedule records the steps the plan marks ``on`` (default
   capture, graph + statistics); each round is one ``on`` and one ``off`` step in random order.
   A step is timed (wall clock, and CPU time of the whole process) from just before the
   ``rec.step()`` that installs its capture (when on) to just after the ``rec.step()`` that ends
   it (its statistics and the hand-off to the writer).  Outside the timed region the writer is
   drained (``rec.flush()``, timed as the drain) and the ranks meet at a barrier made of c10d
   store calls, which are not dispatcher ops, so the recorder never sees them and no rank's next
   step waits for another rank's drain.
2. ``continuous``: blocks of consecutive steps, all recorded (the writer thread working alongside,
   as in a real job) or none, in random order; a block is timed until its last step is flushed.
3. ``bytes``: for each capture level a short recording; bytes per step = growth of the rank file
   between two flushes over the steps in between.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import recorder
from recorder.examples.gpt import build
from recorder.stats.native import available as native_stats_available

#: record(engine=...) for every recording of this process (--engine)
ENGINE: Any = "auto"

#: The capture levels measured by the ``bytes`` phase (``recorder.record`` keywords).
LEVELS: dict[str, dict[str, Any]] = {
    "graph": {"capture": ("graph",)},
    "graph_stats": {"capture": ("graph", "stats")},
    "graph_stats_params": {
        "capture": ("graph", "stats"),
        "values": recorder.select(roles="parameters"),
    },
    "values_all": {"capture": ("graph", "stats"), "values": "all"},
}


def _log(rank: int, msg: str) -> None:
    if rank == 0:
        print(msg, file=sys.stderr, flush=True)


class _Barrier:
    """All ranks meet here, through the c10d store (invisible to the dispatch mode)."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.count = 0
        self.store: Any = dist.distributed_c10d._get_default_store() if world > 1 else None

    def __call__(self) -> None:
        if self.store is None:
            return
        self.count += 1
        key = f"bench_overhead_ddp/{self.count}"
        if self.store.add(key, 1) == self.world:
            self.store.set(key + "/go", "1")
        self.store.wait([key + "/go"])


def _plan(warmup: int, rounds: int, rng: random.Random) -> list[str]:
    plan: list[str] = []
    for _ in range(warmup + rounds):
        plan.extend(rng.sample(["on", "off"], 2))
    return plan


def interleaved(
    train: Callable[[int], None],
    model: torch.nn.Module,
    path: Path,
    plan: list[str],
    barrier: _Barrier,
    rank: int,
) -> dict[str, Any]:
    """Plan step ``k`` is the recorder's step ``2k + 1``; the even steps in between capture
    nothing, so the ``rec.step()`` that ends one (and installs the next capture when it is on)
    runs inside the timed region of the step it installs."""
    times: list[float] = []
    train_part: list[float] = []
    install: list[float] = []
    drains: list[float] = []
    cpu: list[float] = []

    def scheduled(s: int) -> bool:
        return s % 2 == 1 and s // 2 < len(plan) and plan[s // 2] == "on"

    with recorder.record(path, model=model, overwrite=True, schedule=scheduled, engine=ENGINE) as rec:
        barrier()
        for k in range(len(plan)):
            c0, t0 = time.process_time(), time.perf_counter()
            rec.step()  # ends step 2k (nothing captured), installs 2k + 1's capture when on
            ta = time.perf_counter()
            train(k)
            tb = time.perf_counter()
            rec.step()  # ends step 2k + 1: statistics, hand-off to the writer
            t1, c1 = time.perf_counter(), time.process_time()
            times.append(t1 - t0)
            install.append(ta - t0)
            train_part.append(tb - t0)
            cpu.append(c1 - c0)
            rec.flush()
            drains.append(time.perf_counter() - t1)
            barrier()
            if (k + 1) % 20 == 0:
                _log(rank, f"    interleaved {k + 1}/{len(plan)} steps")
        recorded = [[s // 2, s] for s in rec.recorded_steps]
    return {
        "times": times,
        "install": install,
        "train_part": train_part,
        "drains": drains,
        "cpu": cpu,
        "recorded": recorded,
    }


def continuous(
    train: Callable[[int], None],
    model: torch.nn.Module,
    path: Path,
    order: list[str],
    steps: int,
    barrier: _Barrier,
) -> list[dict[str, Any]]:
    state = {"on": False}
    blocks: list[dict[str, Any]] = []
    with recorder.record(
        path, model=model, overwrite=True, schedule=lambda s: state["on"], engine=ENGINE
    ) as rec:
        for mode in order:
            barrier()
            state["on"] = mode == "on"
            t0 = time.perf_counter()
            rec.step()  # begins the capture of the block's first step when on
            for i in range(steps):
                if i == steps - 1:
                    state["on"] = False  # the last rec.step() ends the block's capture
                train(i)
                rec.step()
            rec.flush()  # the block's queued writing is its cost too
            blocks.append({"mode": mode, "per_step_s": (time.perf_counter() - t0) / steps})
    return blocks


def bytes_per_level(
    train: Callable[[int], None],
    model: torch.nn.Module,
    root: Path,
    first: int,
    steps: int,
    rank: int,
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for level, kw in LEVELS.items():
        run = root / f"bytes-{level}"
        file = run / f"rank-{rank:05d}.tft.h5"
        with recorder.record(run, model=model, overwrite=True, engine=ENGINE, **kw) as rec:
            for k in range(first + steps):
                if k == first:
                    rec.flush()
                    size0 = file.stat().st_size
                train(k)
                rec.step()
            rec.flush()
            size1 = file.stat().st_size
            count = len(rec.recorded_steps)
        out[level] = {
            "marginal": (size1 - size0) / steps,
            "file_per_step": file.stat().st_size / count,
            "steps": count,
        }
        _log(rank, f"    bytes {level}: {out[level]['marginal']:.0f} B/step")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one process of bench/overhead_ddp.py")
    p.add_argument("--mode", choices=["single", "ddp"], required=True)
    p.add_argument("--out", required=True, help="folder for the result JSON and the traces")
    p.add_argument("--model", required=True, help="JSON of recorder.examples.gpt.build sizes")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--blocks", type=int, required=True)
    p.add_argument("--block-steps", type=int, required=True)
    p.add_argument("--bytes-steps", type=int, required=True, help="0: skip the bytes phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["auto", "native", "python"], default="auto")
    args = p.parse_args(argv)
    global ENGINE
    ENGINE = args.engine
    torch.set_num_threads(1)
    if args.mode == "ddp":
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    out = Path(args.out)
    traces = out / ("ddp" if world > 1 else "single")
    try:
        model, opt, data = build(seed=args.seed, shard=(rank, world), **json.loads(args.model))
        trained: torch.nn.Module = DistributedDataParallel(model) if world > 1 else model
        batches = [data.batch(i) for i in range(8)]

        def train(step: int) -> None:
            x, y = batches[step % len(batches)]
            loss = trained(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        barrier = _Barrier(world)
        rng = random.Random(args.seed)  # the same plan on every rank
        plan = _plan(args.warmup, args.rounds, rng)
        _log(rank, f"  {args.mode}: interleaved, {len(plan)} steps")
        result: dict[str, Any] = {
            "rank": rank,
            "world_size": world,
            "threads": torch.get_num_threads(),
            "native_stats": native_stats_available(),
            "params": sum(p.numel() for p in model.parameters()),
            "plan": plan,
            "counted_from": 2 * args.warmup,
            "interleaved_run": str(traces / "interleaved"),
        }
        result.update(interleaved(train, model, traces / "interleaved", plan, barrier, rank))
        order = [m for _ in range(args.blocks) for m in rng.sample(["on", "off"], 2)]
        if order:
            _log(rank, f"  {args.mode}: continuous, {len(order)} blocks of {args.block_steps}")
        result["blocks"] = continuous(
            train, model, traces / "continuous", order, args.block_steps, barrier
        )
        if args.bytes_steps > 0:
            _log(rank, f"  {args.mode}: bytes per step, {args.bytes_steps} steps per level")
            result["bytes"] = bytes_per_level(train, model, traces, 2, args.bytes_steps, rank)
        barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()
    (out / f"result-rank-{rank:05d}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
