"""What the flight recorder costs a training step: light capture alone, and light capture with the
ring of full steps, against the same steps unrecorded.

Why: a flight recorder is only useful if it is left on, so its every-step cost is the figure that
matters (issue 13: light capture at most 1.03x; the ring no more than full capture every step).

Run: ``python bench/flight.py`` (needs transformers for ``gpt2``: ``pip install -e '.[bench]'``;
without it the script exits with status 2).  ``--models facts,gpt2``, ``--threads N`` (default
1), ``--blocks N`` (default 8), ``--block-steps N`` (default 12), ``--ring-steps K`` (default 8),
``--quick``.  Progress goes to stderr; stdout gets exactly one JSON line.

How it measures: a flight recorder captures every step it is open for, so configurations cannot
be interleaved step by step as in ``bench/overhead_models.py``; they are interleaved **by
block**: each round runs one block of consecutive steps of every configuration in a fresh random
order (``off``: no recorder; ``hooks``: light capture's hooks and its ``finish()`` alone, without
the recorder's triggers and writer thread, to tell their cost from the hooks'; ``light``:
``record(mode="light")``; ``ring``:
``record(mode="flight", ring_steps=K)``, the default writer process holding the ring; ``full``:
today's ``record()`` writing every step in full, which the ring must not exceed), opening
and closing the recorder outside the timed steps, and drops the first two steps of each block
(warm-up of hooks and caches).  A ratio is the median step time of a configuration over the
median of ``off``.  ``light_bytes_per_step`` is what a light step adds to the file (the light
runs' size less that of a run with no step, over their steps); ``ring_peak_bytes`` is the
ring's high-water mark in the writer process, against its budget ``ring_budget_bytes``.

CPU time, less noisy than wall time on a shared machine: ``cpu_ms`` is the training process's
CPU time (every thread: ``time.process_time``) per timed step and ``writer_process_cpu_ms`` the
writer process's (Linux, from ``/proc``), each from the first timed step of a block to the end of
a ``rec.flush()`` after its last (the warm-up steps are flushed before: their writing is not
counted, the timed steps' is); a configuration's ``*_cpu_ratio`` is both together over
``off``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hf_models import HF_MODELS, build, require_transformers

import recorder
import tracefmt
from recorder.flight.lightcapture import LightCapture
from recorder.tracking import Names

CONFIGS = ("off", "hooks", "light", "ring", "full")
MODELS = ("facts", "gpt2")
RING_BUDGET = 2 << 30


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _empty_run_bytes(model: torch.nn.Module, out: Path) -> int:
    """The bytes of a light run with no step: the file's fixed part (indexes allocated ahead,
    provenance, run.json), taken off so that ``light_bytes_per_step`` is what a step adds."""
    with recorder.record(out, model=model, mode="light", schedule=recorder.schedule(steps=())):
        pass
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


def _process_cpu(pid: int | None) -> float:
    """Seconds of CPU time process ``pid`` has used (0 without it, or off Linux)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _writer_process() -> int | None:
    """The pid of this process's flight writer process (a child running writerproc), if any."""
    me = os.getpid()
    for entry in Path("/proc").iterdir() if sys.platform == "linux" else ():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"recorder.flight.writerproc" in cmd:
            return int(entry.name)
    return None


def bench_model(
    name: str, *, threads: int, blocks: int, block_steps: int, ring_steps: int, seed: int, tmp: Path
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model, _, train = build(name, device="cpu", seed=seed)
    names = Names()
    names.add_root(model)
    hooks = LightCapture(names)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    cpu: dict[str, float] = dict.fromkeys(CONFIGS, 0.0)
    child_cpu: dict[str, float] = dict.fromkeys(CONFIGS, 0.0)
    light_files: list[Path] = []
    light_steps = 0
    peak = 0
    step = 0
    for b in range(blocks + 1):  # block 0 of every configuration warms up and is not counted
        order = list(CONFIGS)
        rng.shuffle(order)
        for config in order:
            out = tmp / f"{config}-{b}"
            rec: recorder.Recorder | None = None
            installed = hooks.install() if config == "hooks" else None
            if config == "light":
                rec = recorder.record(out, model=model, mode="light")
            elif config == "ring":
                rec = recorder.record(
                    out, model=model, mode="flight", ring_steps=ring_steps, ring_bytes=RING_BUDGET
                )
            elif config == "full":
                rec = recorder.record(out, model=model)
            if rec is not None:
                rec.__enter__()
            try:
                child = _writer_process() if rec is not None else None
                cpu_start = child_start = 0.0
                for i in range(block_steps):
                    if i == 2:  # the warm-up steps' writing done, outside the CPU time
                        if rec is not None:
                            rec.flush()
                        cpu_start, child_start = time.process_time(), _process_cpu(child)
                    t0 = time.perf_counter()
                    train(step)
                    if rec is not None:
                        rec.step()
                    elif installed is not None:
                        hooks.finish(step)
                    dt = time.perf_counter() - t0
                    step += 1
                    if b and i >= 2:
                        times[config].append(dt)
                if rec is not None:
                    rec.flush()  # the timed steps' writing, inside the CPU time
                if b:
                    cpu[config] += time.process_time() - cpu_start
                    child_cpu[config] += _process_cpu(child) - child_start
                if rec is not None:
                    peak = max(peak, rec.ring_peak_bytes)
            finally:
                if rec is not None:
                    rec.__exit__(None, None, None)
                if installed is not None:
                    installed.close()
            if config == "light" and b:
                light_files.append(out)
                with tracefmt.open(out) as trace:
                    light_steps += len(trace.light_steps())
        _log(f"  {name}: block {b}/{blocks}")
    off = statistics.median(times["off"])
    med = {c: statistics.median(v) for c, v in times.items()}
    light_bytes = sum(f.stat().st_size for d in light_files for f in d.iterdir() if f.is_file())
    light_bytes -= len(light_files) * _empty_run_bytes(model, tmp / "empty")
    n = max(len(times["off"]), 1)
    cpu_ms = {c: round(1000 * cpu[c] / n, 3) for c in CONFIGS}
    writer_ms = {c: round(1000 * child_cpu[c] / n, 3) for c in ("light", "ring")}
    both = {c: cpu_ms[c] + writer_ms.get(c, 0.0) for c in CONFIGS}
    return {
        "off_ms": round(1000 * off, 2),
        "hooks_ratio": round(med["hooks"] / off, 3),
        "light_ratio": round(med["light"] / off, 3),
        "ring_ratio": round(med["ring"] / off, 3),
        "full_ratio": round(med["full"] / off, 3),
        "median_ms": {c: round(1000 * m, 2) for c, m in med.items()},
        "cpu_ms": cpu_ms,
        "writer_process_cpu_ms": writer_ms,
        **{
            f"{c}_cpu_ratio": round(both[c] / max(both["off"], 1e-9), 3)
            for c in ("light", "ring", "full")
        },
        "samples": len(times["off"]),
        "light_bytes_per_step": light_bytes // max(light_steps, 1),
        "ring_peak_bytes": peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--block-steps", type=int, default=12)
    p.add_argument("--ring-steps", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="2 blocks of 6 steps: a smoke run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    transformers_version = require_transformers("flight") if HF_MODELS & set(models) else None
    blocks, block_steps = (2, 6) if args.quick else (args.blocks, args.block_steps)
    out: dict[str, Any] = {
        "bench": "flight",
        "models": {},
        "ring_peak_bytes": 0,
        "ring_budget_bytes": RING_BUDGET,
        "ring_steps": args.ring_steps,
        "threads": args.threads,
        "blocks": blocks,
        "block_steps": block_steps,
        "quick": args.quick,
        "torch": torch.__version__,
        "transformers": transformers_version,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="recorder-bench-flight-") as d:
        for name in models:
            _log(f"{name}: {blocks} blocks of {block_steps} steps per configuration")
            result = bench_model(
                name,
                threads=args.threads,
                blocks=blocks,
                block_steps=block_steps,
                ring_steps=args.ring_steps,
                seed=args.seed,
                tmp=Path(d) / name,
            )
            out["ring_peak_bytes"] = max(out["ring_peak_bytes"], result.pop("ring_peak_bytes"))
            out["models"][name] = result
            _log(f"  {result}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
