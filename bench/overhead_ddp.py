"""Step-time overhead of the recorder under 2-rank DDP, against the same for one process.

Run: ``python bench/overhead_ddp.py`` (``--quick`` for a smaller, noisier run).  Progress goes to
stderr; stdout gets exactly one JSON line.

Two jobs of the GPT example (``recorder.examples.gpt``, same model, same per-rank batch), each
process with one torch thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``) so that the
2-rank job and the single process are compared fairly on a 2-core machine:

- ``single``: one plain process;
- ``ddp2``: ``torchrun --standalone --nproc_per_node=2``, ``DistributedDataParallel`` over gloo on
  CPU, bound to 127.0.0.1.

Each process is ``bench/_ddp_worker.py``; see its docstring for the phases.  The method is
``bench/overhead.py``'s: on and off steps interleaved in one process (one recorder whose schedule
records the steps a seeded plan marks ``on``, the same plan on every rank), the writer drained
outside the timed region, ratios of medians.  Per-step times are taken on every rank and a step's
time is the maximum over the ranks (the job waits for its slowest rank).  ``repeats`` runs the
pair of jobs that many times, alternating single and ddp2, and the headline figures are the
medians over the repeats (each repeat's ratios are in ``repeats``).

Reported per job:

- ``off_ms`` / ``on_ms``: median step time recorder off / on (graph + statistics, every op);
  ``ratio`` = on / off.  ``train_ms_on`` / ``train_ms_off``: up to the ``rec.step()`` that ends it
  (the capture's install, forward, backward, optimizer under the capture), so ``on_ms -
  train_ms_on`` is what ending the capture costs (statistics launch, hand-off to the writer).
- ``install_ms``: what installing a step's capture costs (median time of the ``rec.step()``
  that starts an on step, minus that of one that starts an off step); it is part of ``on_ms``.
- ``writer_ms``: median time to drain the writer after an ``on`` step (the background cost).
- ``cpu_ms_off`` / ``cpu_ms_on`` / ``cpu_ratio``: the same for the CPU time of the process
  (every thread: training, writer, gloo) over the timed region; unlike wall time it barely moves
  when other work on the machine takes cores away.
- ``continuous_ratio``: blocks of consecutive recorded steps, the writer thread working alongside
  and competing for the cores, against unrecorded blocks; each block timed until flushed.
- ``ops_per_step``: ops in a recorded step (median); ``recorder_cpu_us_per_op``: (``cpu_ms_on``
  - ``cpu_ms_off``) / ``ops_per_step``, what the recorder costs the process per recorded op.
- ``collective_ms`` (ddp2): median over the recorded steps of the host time the step's c10d ops
  took on the slowest rank, read from the trace (``replayer.ranks.digest_step``); while
  recording, the recorder waits on each collective's ``Work`` inside the dispatch mode so that
  its statistics see final values, so this includes the wait.  ``collectives_per_step``: how many.
- ``bytes_per_step``: per rank, per capture level (``graph``; ``graph_stats``, the default;
  ``graph_stats_params``: plus the parameters' values; ``values_all``), the growth of the rank
  file between two flushes divided by the steps in between (``marginal``) and the final file size
  over the recorded steps (``file_per_step``, with the file's fixed overhead).

The goal (issue 12): the 2-rank ratio no worse than the single-process ratio.  The machine is
shared: other work on it moves single and ddp2 figures alike only when it lasts across both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tracefmt
from replayer.ranks import digest_step

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_ddp_worker.py"
#: The GPT example's default size (``python -m recorder.examples.gpt``).
MODEL = {"layers": 2, "embd": 64, "heads": 4, "block": 64, "batch": 16}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1",
            "GLOO_SOCKET_IFNAME": "lo",
            "PYTHONPATH": os.pathsep.join(
                [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
    )
    return env


def run_job(mode: str, out: Path, worker_args: list[str], timeout: float) -> list[dict[str, Any]]:
    """Run one job (``single`` or ``ddp``) and return each rank's result, rank order."""
    out.mkdir(parents=True)
    args = ["--mode", mode, "--out", str(out), *worker_args]
    if mode == "ddp":
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(WORKER),
            *args,
        ]
    else:
        cmd = [sys.executable, str(WORKER), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env=_env(), timeout=timeout, stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"The {mode} job failed with exit code {proc.returncode}: {proc.stdout}")
    _log(f"  {mode}: done in {time.perf_counter() - t0:.1f} s")
    return [json.loads(f.read_text()) for f in sorted(out.glob("result-rank-*.json"))]


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 2)


def _from_trace(run: str, steps: list[int], distributed: bool) -> dict[str, Any]:
    """Ops per recorded step and, for a distributed run, the medians over ``steps`` of the host
    time of the step's c10d ops on the rank where they took longest and on the rank where they
    took least (the difference is mostly one rank waiting for the other to arrive)."""
    slowest: list[float] = []
    fastest: list[float] = []
    comm_ops: list[int] = []
    ops: list[int] = []
    with tracefmt.open(run) as trace:
        ranks = sorted(trace.ranks)
        for s in steps:
            loaded = [trace.step(s, r) for r in ranks]
            ops.append(max(len(step.ops) for step in loaded))
            if not distributed:
                continue
            digests = [digest_step(step, world_size=trace.world_size) for step in loaded]
            slowest.append(max(d.comm_ns for d in digests) / 1e9)
            fastest.append(min(d.comm_ns for d in digests) / 1e9)
            comm_ops.append(max(d.comm_ops for d in digests))
    out: dict[str, Any] = {"ops_per_step": int(statistics.median(ops)) if ops else None}
    if comm_ops:
        out["collective_ms"] = _median_ms(slowest)
        out["collective_ms_fastest_rank"] = _median_ms(fastest)
        out["collectives_per_step"] = int(statistics.median(comm_ops))
    return out


def summarise(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One job's figures from its ranks' results (a step's time: the slowest rank's)."""
    first = ranks[0]
    plan: list[str] = first["plan"]
    counted = range(first["counted_from"], len(plan))
    step_s = [max(r["times"][k] for r in ranks) for k in range(len(plan))]
    train_s = [max(r["train_part"][k] for r in ranks) for k in range(len(plan))]
    by = {m: [k for k in counted if plan[k] == m] for m in ("on", "off")}
    off = statistics.median(step_s[k] for k in by["off"])
    on = statistics.median(step_s[k] for k in by["on"])
    cpu = {m: [max(r["cpu"][k] for r in ranks) for k in by[m]] for m in by}
    result: dict[str, Any] = {
        "ranks": len(ranks),
        "params": first["params"],
        "threads": first["threads"],
        "native_stats": all(r["native_stats"] for r in ranks),
        "off_ms": round(1000 * off, 2),
        "on_ms": round(1000 * on, 2),
        "ratio": round(on / off, 3),
        "train_ms_off": _median_ms([train_s[k] for k in by["off"]]),
        "train_ms_on": _median_ms([train_s[k] for k in by["on"]]),
        "writer_ms": _median_ms([max(r["drains"][k] for r in ranks) for k in by["on"]]),
        "cpu_ms_off": _median_ms(cpu["off"]),
        "cpu_ms_on": _median_ms(cpu["on"]),
        "cpu_ratio": round(statistics.median(cpu["on"]) / statistics.median(cpu["off"]), 3),
        "samples": {m: len(v) for m, v in by.items()},
    }
    install = [max(r["install"][k] for r in ranks) for k in range(len(plan))]
    result["install_ms"] = round(
        1000
        * (
            statistics.median(install[k] for k in by["on"])
            - statistics.median(install[k] for k in by["off"])
        ),
        3,
    )
    blocks = [max(r["blocks"][i]["per_step_s"] for r in ranks) for i in range(len(first["blocks"]))]
    if blocks:
        modes = [b["mode"] for b in first["blocks"]]
        on_b = statistics.median(t for t, m in zip(blocks, modes, strict=True) if m == "on")
        off_b = statistics.median(t for t, m in zip(blocks, modes, strict=True) if m == "off")
        result["continuous_ratio"] = round(on_b / off_b, 3)
    trace_step = dict(first["recorded"])  # plan step -> the recorder's step number
    recorded = [trace_step[k] for k in by["on"] if k in trace_step]
    result.update(_from_trace(first["interleaved_run"], recorded, len(ranks) > 1))
    if "bytes" in first:
        result["bytes_per_step"] = {
            level: {
                "marginal": round(max(r["bytes"][level]["marginal"] for r in ranks)),
                "file_per_step": round(max(r["bytes"][level]["file_per_step"] for r in ranks)),
            }
            for level in first["bytes"]
        }
    return result


_HEADLINE = ("off_ms", "on_ms", "ratio", "train_ms_off", "train_ms_on", "writer_ms")
_CPU = ("cpu_ms_off", "cpu_ms_on", "cpu_ratio")
_OPTIONAL = (
    "install_ms",
    "continuous_ratio",
    "collective_ms",
    "collective_ms_fastest_rank",
    "collectives_per_step",
    "ops_per_step",
)


def combine(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians over repeats of one job's figures (bytes from the first repeat)."""
    out: dict[str, Any] = {}
    for key in (*_HEADLINE, *_CPU, *_OPTIONAL):
        values = [r[key] for r in repeats if r.get(key) is not None]
        if values:
            out[key] = round(statistics.median(values), 3)
    for key in ("collectives_per_step", "ops_per_step"):
        if key in out:
            out[key] = int(out[key])
    out["samples_per_repeat"] = repeats[0]["samples"]
    out["ranks"] = repeats[0]["ranks"]
    out["params"] = repeats[0]["params"]
    out["threads"] = repeats[0]["threads"]
    out["native_stats"] = all(r["native_stats"] for r in repeats)
    for r in repeats:
        if "bytes_per_step" in r:
            out["bytes_per_step"] = r["bytes_per_step"]
            break
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="fewer rounds and one repeat")
    p.add_argument("--rounds", type=int, default=None, help="counted on/off rounds per job")
    p.add_argument("--warmup", type=int, default=3, help="uncounted rounds first")
    p.add_argument("--repeats", type=int, default=None, help="single/ddp2 job pairs (default 3)")
    p.add_argument("--blocks", type=int, default=3, help="on/off block pairs (0: skip)")
    p.add_argument("--block-steps", type=int, default=5, help="steps per block")
    p.add_argument("--bytes-steps", type=int, default=6, help="steps per capture level (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--engine",
        choices=["auto", "native", "python"],
        default="auto",
        help="record(engine=...) in every job (auto: native here, DDP's model holds plain tensors)",
    )
    p.add_argument("--timeout", type=float, default=240, help="seconds per job before it is killed")
    args = p.parse_args(argv)
    rounds = args.rounds or (8 if args.quick else 30)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = 2 if args.quick else args.warmup
    blocks = min(args.blocks, 1) if args.quick else args.blocks
    bytes_steps = min(args.bytes_steps, 3) if args.quick else args.bytes_steps
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "ddp": []}
    with tempfile.TemporaryDirectory(prefix="overhead-ddp-") as d:
        for i in range(repeats):
            for mode in ("single", "ddp") if i % 2 == 0 else ("ddp", "single"):
                _log(f"repeat {i + 1}/{repeats}: {mode}, {rounds} rounds + {warmup} warm-up")
                worker_args = [
                    "--model",
                    json.dumps(MODEL),
                    "--rounds",
                    str(rounds),
                    "--warmup",
                    str(warmup),
                    "--blocks",
                    str(blocks),
                    "--block-steps",
                    str(args.block_steps),
                    "--bytes-steps",
                    str(bytes_steps if i == 0 else 0),
                    "--seed",
                    str(args.seed + i),
                    "--engine",
                    args.engine,
                ]
                job = run_job(mode, Path(d) / f"{mode}-{i}", worker_args, args.timeout)
                runs[mode].append(summarise(job))
    single, ddp2 = combine(runs["single"]), combine(runs["ddp"])
    for fig in (single, ddp2):
        if fig.get("ops_per_step"):
            fig["recorder_cpu_us_per_op"] = round(
                1000 * (fig["cpu_ms_on"] - fig["cpu_ms_off"]) / fig["ops_per_step"], 1
            )
    out: dict[str, Any] = {
        "bench": "overhead_ddp",
        "engine": args.engine,
        "model": MODEL,
        "params": single["params"],
        "threads_per_rank": ddp2["threads"],
        "capture": "graph+stats every step (the default)",
        "backend": "gloo, CPU, 127.0.0.1",
        "rounds": rounds,
        "warmup_rounds": warmup,
        "repeats": {
            "single_ratio": [r["ratio"] for r in runs["single"]],
            "ddp2_ratio": [r["ratio"] for r in runs["ddp"]],
            "single_continuous_ratio": [r.get("continuous_ratio") for r in runs["single"]],
            "ddp2_continuous_ratio": [r.get("continuous_ratio") for r in runs["ddp"]],
        },
        "interleaved": True,
        "torch": _torch_version(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "single": single,
        "ddp2": ddp2,
        "goal": {
            "ddp_ratio_le_single": ddp2["ratio"] <= single["ratio"],
            "ddp_cpu_ratio_le_single": ddp2["cpu_ratio"] <= single["cpu_ratio"],
        },
    }
    print(json.dumps(out))
    return 0


def _torch_version() -> str:
    from importlib.metadata import version

    return version("torch")


if __name__ == "__main__":
    sys.exit(main())
