"""Step-time overhead of the recorder on models nobody here wrote, against the same steps unrecorded.

Why: bench/overhead.py measures the recorder on our own example GPT; a user's model is someone
else's code (Hugging Face's above all), with its own mix of small ops.  This bench records tiny
Hugging Face GPT-2 and Llama (SDPA) models built from configs with random weights (nothing is
downloaded) and the FACTS nanoGPT (``facts``), with 1 and 2 torch threads, and compares each
capture level with ``torch.profiler``.  The models are ``bench/hf_models.py``'s.

Run: ``python bench/overhead_models.py`` (needs transformers: ``pip install -e '.[bench]'``;
without it the script exits with status 2).  The full run takes about 4 minutes on 2 quiet CPU
cores (estimated from the quick run's step times; twice that when the cores are shared), half of
it ``facts`` (a plain step of ~110 ms on a quiet machine, a recorded one up to a few times
that), which therefore gets fewer rounds; ``--quick`` (3 rounds, 2 for ``facts``) takes about
30 s.  ``--models gpt2,llama,facts``, ``--threads 1,2``, ``--rounds N`` (every model; default
101, ``facts`` 31), ``--device cpu|cuda``, ``--engine auto|native|python`` (passed to
``record(engine=...)``; which engine ran is read back from the trace's provenance,
``"recorder_engine"``, and ``"native"`` in the output says whether it was the C++ one).
Progress goes to stderr; stdout gets exactly one JSON line.

How it measures (bench/overhead.py's method): per model and thread count, one process runs
every configuration *interleaved*: each round runs one training step of every configuration in a
fresh random order, after warm-up rounds that are not counted.  A ratio is the median step time of
a configuration over the median of ``off``.  All recorders are open at once, each with a schedule
that captures exactly the steps the plan gives it; a step's time runs from just before the
``rec.step()`` that starts its capture to just after the one that ends it.  Between two steps the
recorder's writer is drained outside the timed region (``writer_ms``: its median drain time, the
background cost per step).  On CUDA the clock is read after ``torch.cuda.synchronize()``.

Configurations:

- ``off``: no recorder.
- ``graph``: ``capture=("graph",)``; ``graph_stats``: ``("graph", "stats")`` (the default);
  ``graph_stats_params``: plus full values of the parameters (``select(roles="parameters")``).
- ``profiler``: ``torch.profiler.profile(record_shapes=True)`` around the step (entering and
  leaving it, which collects the events, are timed).

``ops_per_step`` is the number of ops in a step of the ``graph`` trace; ``bytes_per_step`` is a
trace's file size over its recorded steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hf_models import HF_MODELS, build, require_transformers

import recorder
import tracefmt
from recorder.stats.native import available as native_stats_available

RECORDER_CONFIGS: dict[str, dict[str, Any]] = {
    "graph": {"capture": ("graph",)},
    "graph_stats": {"capture": ("graph", "stats")},
    "graph_stats_params": {"capture": ("graph", "stats"), "values": recorder.select(roles="parameters")},
}
CONFIGS = ("off", *RECORDER_CONFIGS, "profiler")
MODELS = ("gpt2", "llama", "facts")
#: Counted rounds (full, quick) and warm-up rounds (full, quick) per model.
ROUNDS = {"facts": (31, 2)}
DEFAULT_ROUNDS = (101, 3)
WARMUP = {"facts": (2, 1)}
DEFAULT_WARMUP = (3, 1)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _plan(warmup: int, rounds: int, rng: random.Random) -> tuple[list[str], int]:
    """Warm-up rounds, then counted rounds, of every configuration in a random order, no
    configuration twice in a row.  Returns the plan and the index of its first counted step."""
    plan: list[str] = []
    for _ in range(warmup + rounds):
        order = list(CONFIGS)
        rng.shuffle(order)
        if plan and order[0] == plan[-1]:
            order[0], order[-1] = order[-1], order[0]
        plan.extend(order)
    return plan, warmup * len(CONFIGS)


def _only(plan: list[str], name: str) -> Callable[[int], bool]:
    """The schedule of the recorder of configuration ``name``: the steps the plan gives it."""
    return lambda step: step < len(plan) and plan[step] == name


def read_trace(path: Path) -> tuple[int, str]:
    """Ops in a recorded step (the median over the steps) and the engine that recorded them
    (the provenance's ``"recorder_engine"``; a trace without it was recorded by the Python one)."""
    with tracefmt.open(path) as trace:
        ops = [s.num_ops for s in trace.summaries()]
        engine = str(trace.provenance.extra.get("recorder_engine", "python"))
    return int(statistics.median(ops)), engine


def bench_model(
    name: str,
    threads: int,
    rounds: int,
    warmup: int,
    *,
    device: str,
    engine: str,
    seed: int,
    tmp: Path,
) -> dict[str, Any]:
    """One model at one thread count: every configuration interleaved, ``rounds`` counted."""
    torch.set_num_threads(threads)
    model, _, train = build(name, device=device, seed=seed)
    sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else lambda: None
    plan, counted_from = _plan(warmup, rounds, random.Random(seed))
    recs = {
        config: recorder.record(
            tmp / config, model=model, overwrite=True, schedule=_only(plan, config), engine=engine, **kw
        )
        for config, kw in RECORDER_CONFIGS.items()
    }
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    drains: dict[str, list[float]] = {c: [] for c in RECORDER_CONFIGS}
    with contextlib.ExitStack() as stack:
        for r in recs.values():
            stack.enter_context(r)
        # Step 0's capture starts in __enter__ already; time it from here.
        sync()
        t0 = time.perf_counter()
        for step, config in enumerate(plan):
            if config == "profiler":
                with torch.profiler.profile(record_shapes=True):
                    train(step)
                    sync()
            else:
                train(step)
            if config in recs:
                recs[config].step()
            sync()
            t1 = time.perf_counter()
            if step >= counted_from:
                times[config].append(t1 - t0)
            if config in recs:
                d0 = time.perf_counter()
                recs[config].flush()
                if step >= counted_from:
                    drains[config].append(time.perf_counter() - d0)
            nxt = plan[step + 1] if step + 1 < len(plan) else None
            for other, r in recs.items():
                if other not in (config, nxt):
                    r.step()
            sync()
            t0 = time.perf_counter()
            if nxt in recs:
                recs[nxt].step()
            if (step + 1) % 25 == 0:
                _log(f"  {name}, {threads} thread(s): {step + 1}/{len(plan)} steps")
    off = statistics.median(times["off"])
    med = {c: statistics.median(v) for c, v in times.items()}
    per_step = {}
    for config, r in recs.items():
        if r.recorded_steps:
            total = sum(f.stat().st_size for f in (tmp / config).iterdir() if f.is_file())
            per_step[config] = total // len(r.recorded_steps)
    ops, engine_used = read_trace(tmp / "graph")
    return {
        "off_ms": round(1000 * off, 2),
        "ratio": {c: round(m / off, 3) for c, m in med.items() if c != "off"},
        "median_ms": {c: round(1000 * m, 2) for c, m in med.items()},
        "samples": len(times["off"]),
        "writer_ms": {c: round(1000 * statistics.median(v), 2) for c, v in drains.items()},
        "bytes_per_step": per_step,
        "ops_per_step": ops,
        "engine_used": engine_used,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a few rounds: a smoke run, noisy figures")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated: gpt2,llama,facts")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--rounds", type=int, default=None, help="counted rounds of every model")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--engine", choices=["auto", "native", "python"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not threads or min(threads) < 1:
        p.error("--threads takes positive thread counts, e.g. 1,2")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    transformers_version = require_transformers("overhead_models") if HF_MODELS & set(models) else None
    pick = 1 if args.quick else 0
    out: dict[str, Any] = {
        "bench": "overhead_models",
        "models": {},
        "native": False,
        "engine": args.engine,
        "device": args.device,
        "quick": args.quick,
        "interleaved": True,
        "torch": torch.__version__,
        "transformers": transformers_version,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "native_stats": native_stats_available(),
        "rounds": {},
        "warmup_rounds": {},
    }
    engines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="recorder-bench-models-") as d:
        for name in models:
            rounds = args.rounds or ROUNDS.get(name, DEFAULT_ROUNDS)[pick]
            warmup = WARMUP.get(name, DEFAULT_WARMUP)[pick]
            out["rounds"][name], out["warmup_rounds"][name] = rounds, warmup
            entry: dict[str, Any] = {"threads": {}}
            for n in threads:
                _log(f"{name}, {n} thread(s): {rounds} rounds + {warmup} warm-up")
                tmp = Path(d) / f"{name}-{n}"
                result = bench_model(
                    name,
                    n,
                    rounds,
                    warmup,
                    device=args.device,
                    engine=args.engine,
                    seed=args.seed,
                    tmp=tmp,
                )
                entry["ops_per_step"] = result.pop("ops_per_step")
                entry["params"] = result.pop("params")
                engines.append(result.pop("engine_used"))
                entry["threads"][str(n)] = result
                _log(f"  off {result['off_ms']} ms, ratios {result['ratio']}")
            out["models"][name] = entry
    out["engines_used"] = sorted(set(engines))
    out["native"] = bool(engines) and all(e == "native" for e in engines)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
