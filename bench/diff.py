"""Cost of ``replayer diff``: two 10k-op steps and two 100k-op steps, stats-only and with values.

Run: ``python bench/diff.py`` (``--sizes 10000,100000``, ``--repeat 3``, ``--tmp DIR``).  Progress
goes to stderr; stdout gets exactly one JSON line.  Traces are written under a temporary directory
with ``fsync=False`` and deleted at the end.

Traces (synthetic, written with ``tracefmt.TraceWriter`` + ``GraphBuilder``): a chain of ``n`` ops
(40% forward, 40% backward, 20% optimizer; modules ``layers.K.{fc,act}``; every op reads the
previous activation and one of 64 parameters and writes one 16-element float32 tensor whose
numbers really follow from its inputs).  Side A holds the step; side B holds the same step (step 0)
and a step whose op ``n/2`` adds noise, so half of the ops diverge (step 1).  ``stats`` traces
record statistics and fingerprints only; ``values`` traces also every tensor's values.

Figures, per mode and size:

- ``identical_s``: ``diff_steps`` of A:0 vs B:0 (every tensor compared, all bit-identical); the
  minimum of ``--repeat`` runs.  ``diverged_s``: A:0 vs B:1 (the origin found at op ``n/2``; with
  values, the values of every diverged tensor are read from both files and measured).
- ``load_s``: ``trace.step(...)`` of both sides (the reader's cost, not the diff's).
- ``peak_mb``: ``tracemalloc`` peak during one diverged diff (the steps already loaded), and
  ``rss_mb``: the process's peak resident set at the end (``resource.ru_maxrss``).
- ``*_cpu_s``: the same in process CPU time (the diff is single-threaded; CPU time is steadier
  than wall time on a shared machine).  ``us_per_op``: ``diverged_cpu_s`` / ops (and
  ``identical_us_per_op``); ``linear_ratio``: us_per_op at the largest size / at the smallest
  (1.0 is linear).  ``goal_stats_10k_under_1s``: stats-only diverged diff of 10k ops
  under one second.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

import tracefmt
from replayer.diff.core import diff_steps
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import STATS_DTYPE, Graph

NUMEL = 16
PARAMS = 64
NAMES = {
    Phase.FORWARD: ("aten::addmm.default", "aten::relu.default"),
    Phase.BACKWARD: ("aten::mm.default", "aten::threshold_backward.default"),
    Phase.OPTIMIZER: ("aten::lerp_.Scalar", "aten::addcmul_.default"),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_graph(n_ops: int) -> Graph:
    g = GraphBuilder()
    h = g.add_tensor(DType.FLOAT32, (NUMEL,), role=Role.INPUT, name="input")
    params = [
        g.add_tensor(DType.FLOAT32, (NUMEL,), role=Role.PARAMETER, name=f"p{i}") for i in range(PARAMS)
    ]
    for k in range(n_ops):
        phase = (
            Phase.FORWARD if k < 0.4 * n_ops else Phase.BACKWARD if k < 0.8 * n_ops else Phase.OPTIMIZER
        )
        out = g.add_tensor(DType.FLOAT32, (NUMEL,), producer=g.num_ops)
        g.add_op(
            NAMES[phase][k % 2],
            phase=phase,
            module=f"layers.{k // 16}.{'act' if k % 2 else 'fc'}",
            inputs=[h, params[k % PARAMS]],
            outputs=[out],
        )
        h = out
    return g.finish()


def step_data(n_ops: int, noise_from: int | None, seed: int = 0) -> np.ndarray:
    """Values of every tensor (input, params, then one output per op): h_k = h_{k-1} * p_{k%P}."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(NUMEL).astype(np.float32)
    params = (1 + 1e-4 * rng.standard_normal((PARAMS, NUMEL))).astype(np.float32)
    factors = params[np.arange(n_ops) % PARAMS].copy()
    if noise_from is not None:
        factors[noise_from] *= np.float32(1 + 1e-3)
    outs = (x * np.cumprod(factors, axis=0, dtype=np.float32)).astype(np.float32)
    return np.concatenate([x[None], params, outs]).astype(np.float32)


def stats_rows(data: np.ndarray) -> np.ndarray:
    """STATS_DTYPE rows for every row of ``data`` (vectorised; what the recorder computes)."""
    x = data.astype(np.float64)
    rows = np.zeros(len(data), dtype=STATS_DTYPE)
    rows["flags"] = 7
    rows["min"], rows["max"] = x.min(axis=1), x.max(axis=1)
    rows["mean"], rows["std"] = x.mean(axis=1), x.std(axis=1)
    rows["norm"] = np.sqrt((x * x).sum(axis=1))
    rows["zero"] = (x == 0).sum(axis=1)
    words = np.ascontiguousarray(data).view(np.uint64)
    rows["fingerprint"] = words.sum(axis=1, dtype=np.uint64)
    return rows


def write(path: Path, graph: Graph, steps: list[np.ndarray], values: bool) -> float:
    t0 = time.perf_counter()
    with TraceWriter(path, fsync=False) as w:
        for i, data in enumerate(steps):
            w.write_step(
                StepRecord(
                    step=i,
                    graph=graph,
                    stats=stats_rows(data),
                    values=dict(enumerate(data)) if values else {},
                )
            )
            w.flush()
    return time.perf_counter() - t0


def measure(tmp: Path, n_ops: int, values: bool, repeat: int) -> dict[str, Any]:
    mode = "values" if values else "stats"
    graph = make_graph(n_ops)
    base, noisy = step_data(n_ops, None), step_data(n_ops, n_ops // 2)
    pa, pb = tmp / f"a-{mode}-{n_ops}.tft.h5", tmp / f"b-{mode}-{n_ops}.tft.h5"
    gen = write(pa, graph, [base], values) + write(pb, graph, [base, noisy], values)
    log(f"{mode} {n_ops}: wrote traces in {gen:.1f} s")
    with tracefmt.open(pa) as ta, tracefmt.open(pb) as tb:
        t0 = time.perf_counter()
        a, same, diverged = ta.step(0), tb.step(0), tb.step(1)
        load = (time.perf_counter() - t0) * 2 / 3
        times_same, times_div, cpu_same, cpu_div = [], [], [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            d_same = diff_steps(a, same)
            times_same.append(time.perf_counter() - t0)
            cpu_same.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            d_div = diff_steps(a, diverged)
            times_div.append(time.perf_counter() - t0)
            cpu_div.append(time.process_time() - c0)
        if not d_same.identical:
            raise SystemExit(f"bench bug: identical steps differ ({d_same.verdict})")
        origin = d_div.origin
        if origin is None or origin.a is None or origin.a.index != n_ops // 2:
            raise SystemExit(f"bench bug: origin {origin} is not op {n_ops // 2}")
        tracemalloc.start()
        diff_steps(a, diverged)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result = {
        "ops": n_ops,
        "tensors": graph.num_tensors,
        "identical_s": round(min(times_same), 4),
        "diverged_s": round(min(times_div), 4),
        "diverged_ops": len(d_div.divergences),
        "load_s": round(load, 3),
        "peak_mb": round(peak / 2**20, 1),
        "identical_cpu_s": round(min(cpu_same), 4),
        "diverged_cpu_s": round(min(cpu_div), 4),
        "us_per_op": round(min(cpu_div) / n_ops * 1e6, 2),
        "identical_us_per_op": round(min(cpu_same) / n_ops * 1e6, 2),
        "write_s": round(gen, 1),
    }
    log(f"{mode} {n_ops}: {json.dumps(result)}")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="op counts, comma-separated")
    p.add_argument("--modes", default="stats,values", help="stats, values or both")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tmp", default=None, help="directory for the traces")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-diff-", dir=args.tmp))
    out: dict[str, Any] = {
        "bench": "diff",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numel_per_tensor": NUMEL,
    }
    try:
        for mode in args.modes.split(","):
            rows = {str(n): measure(tmp, n, mode == "values", args.repeat) for n in sizes}
            small, large = rows[str(min(sizes))], rows[str(max(sizes))]
            out[mode] = {
                "sizes": rows,
                "linear_ratio": round(large["us_per_op"] / small["us_per_op"], 2),
                "identical_linear_ratio": round(
                    large["identical_us_per_op"] / small["identical_us_per_op"], 2
                ),
            }
        if "stats" in out and "10000" in out["stats"]["sizes"]:
            out["goal_stats_10k_under_1s"] = out["stats"]["sizes"]["10000"]["diverged_s"] < 1.0
        out["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
