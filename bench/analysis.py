"""Analysis over a long run: ``tracefmt to-parquet`` rows per second and bytes, a DuckDB query's
time on a synthetic run of 10,000 steps, and ``replayer timeline``'s time over 10,000 and 100,000.

Run: ``python bench/analysis.py`` (``--steps N``, ``--quick`` for 1,000 steps, ``--tmp DIR``,
``--keep`` to leave the run and export in place).  Needs the analysis extra
(``pip install 'tracefmt[analysis]'``; without it the script exits with status 2).  Progress goes
to stderr; stdout gets exactly one JSON line.

The run (:func:`synthetic_run`, reusable by other benchmarks): one rank, every step the same
graph of an 8-layer MLP (``--layers``): per layer a matmul, a bias add and a ReLU forward, two
matmuls backward and two optimizer updates, 7 ops per layer plus the loss (57 ops, 74 tensors),
each step with statistics of every tensor (norms that drift and grow with the step, so queries
have something to find), op timings, op start times and a loss scalar.  The writer stores the
graph once (spec section 7); each step adds its statistics and timings.

Figures (all in the JSON):

- ``run``: steps, ops and tensors per step, the rank file's bytes, and the seconds writing it took.
- ``to_parquet``: ``rows`` written over all tables, ``rows_per_s`` (rows over ``seconds``, the
  wall time of :func:`tracefmt.analysis.to_parquet`: reading, expanding each step's graph rows,
  Arrow conversion, zstd Parquet writing, manifest), ``bytes`` of the Parquet files, and
  ``by_table`` (rows and bytes per table).  The better of two exports in the same process after
  the run was written (file in page cache); ``seconds_first`` is the first's (pyarrow and numpy
  warming up).
- ``duckdb_query_s``: the best of 3 runs of ``duckdb_query`` (the largest forward-output norm of
  each module over all steps: the forward ops' outputs, unnested, joined with ``stats``; 740,000
  statistics rows and 250,000 forward ops at 10,000 steps) through
  :func:`tracefmt.analysis.query_export` (a fresh in-memory DuckDB connection with the views each
  time), and ``duckdb_query_rows`` its result rows.
- ``timeline_s``: seconds of ``replayer timeline RUN --metric norm --module layers.3 -o x.png`` in
  a fresh process (imports included; best of 3) over the run and over a second run of
  ``--timeline-steps`` steps (100,000; ten times ``--steps`` with ``--quick``), whose writing took
  ``long_run_write_s``.  Goal: under 10 s at 100,000 steps on 2 cores, growing linearly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import tracefmt
from tracefmt import DType, Graph, GraphBuilder, Phase, Role, StepRecord, TraceWriter, rank_file_path
from tracefmt.records import empty_op_stats
from tracefmt.stats import tensor_stats

QUERY = """
SELECT o.module, max(s.norm) AS max_norm
FROM (SELECT rank, step, module, unnest(outputs) AS tensor FROM ops WHERE phase = 'forward') o
JOIN stats s USING (rank, step, tensor)
GROUP BY o.module
ORDER BY o.module
""".strip()


#: The module whose norm ``replayer timeline`` draws in the benchmark.
TIMELINE_MODULE = "layers.3"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mlp_graph(layers: int = 8, batch: int = 32, width: int = 64) -> Graph:
    """The benchmark's step graph: ``layers`` linear layers forward, backward and optimizer."""
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (batch, width), role=Role.INPUT, name="input")
    params = []
    for i in range(layers):
        w = g.add_tensor(DType.FLOAT32, (width, width), role=Role.PARAMETER, name=f"layers.{i}.weight")
        b = g.add_tensor(DType.FLOAT32, (width,), role=Role.PARAMETER, name=f"layers.{i}.bias")
        params.append((i, w, b))
        mod = f"layers.{i}"
        y = g.add_tensor(DType.FLOAT32, (batch, width), producer=g.num_ops)
        g.add_op("aten::mm.default", phase=Phase.FORWARD, module=mod, inputs=[x, w], outputs=[y])
        z = g.add_tensor(DType.FLOAT32, (batch, width), producer=g.num_ops)
        g.add_op("aten::add.Tensor", phase=Phase.FORWARD, module=mod, inputs=[y, b], outputs=[z])
        x = g.add_tensor(DType.FLOAT32, (batch, width), producer=g.num_ops)
        g.add_op("aten::relu.default", phase=Phase.FORWARD, module=f"{mod}.act", inputs=[z], outputs=[x])
    loss = g.add_tensor(DType.FLOAT32, (), producer=g.num_ops)
    g.add_op("aten::mean.default", phase=Phase.FORWARD, module="", inputs=[x], outputs=[loss])
    grads = []
    for i, w, b in reversed(params):
        gw = g.add_tensor(
            DType.FLOAT32,
            (width, width),
            role=Role.GRADIENT,
            name=f"layers.{i}.weight.grad",
            producer=g.num_ops,
        )
        g.add_op(
            "aten::mm.default",
            phase=Phase.BACKWARD,
            module=f"layers.{i}",
            inputs=[loss, w],
            outputs=[gw],
        )
        gb = g.add_tensor(
            DType.FLOAT32, (width,), role=Role.GRADIENT, name=f"layers.{i}.bias.grad", producer=g.num_ops
        )
        g.add_op(
            "aten::sum.dim_IntList",
            phase=Phase.BACKWARD,
            module=f"layers.{i}",
            inputs=[loss],
            outputs=[gb],
        )
        grads.append((i, w, gw, b, gb))
    for i, w, gw, b, gb in grads:
        for p, grad, name in ((w, gw, "weight"), (b, gb, "bias")):
            new = g.add_tensor(
                DType.FLOAT32, (width, width) if name == "weight" else (width,), role=Role.PARAMETER,
                name=f"layers.{i}.{name}", producer=g.num_ops, version=1,
            )  # fmt: skip
            g.add_op(
                "aten::add_.Tensor", phase=Phase.OPTIMIZER, module="", inputs=[p, grad], outputs=[new]
            )
    return g.finish()


def synthetic_run(path: str | os.PathLike[str], steps: int, *, layers: int = 8, seed: int = 0) -> Path:
    """Write a one-rank run of ``steps`` steps of :func:`mlp_graph` into the run directory
    ``path`` (replaced) and return it.  Each step's statistics are a base set scaled per tensor
    by a slow drift and noise, its op timings drawn at random; written without fsync."""
    run = Path(path)
    shutil.rmtree(run, ignore_errors=True)
    rng = np.random.default_rng(seed)
    graph = mlp_graph(layers)
    base = np.concatenate(
        [
            tensor_stats(rng.standard_normal(t.shape).astype(np.float32), t.dtype)[None]
            for t in graph.tensors
        ]
    )
    n_t, n_ops = graph.num_tensors, graph.num_ops
    drift = rng.uniform(0.0, 2e-4, n_t)
    with TraceWriter(rank_file_path(run, 0), fsync=False) as w:
        for s in range(steps):
            stats = base.copy()
            scale = (1.0 + drift * s) * rng.lognormal(0.0, 0.05, n_t)
            for field in ("min", "max", "mean", "std", "norm"):
                stats[field] *= scale
            op_stats = empty_op_stats(n_ops)
            op_stats["host_ns"] = rng.integers(1_000, 100_000, n_ops)
            starts = np.cumsum(op_stats["host_ns"] + 500) - op_stats["host_ns"]
            w.write_step(
                StepRecord(
                    step=s, graph=graph, stats=stats, op_stats=op_stats, op_starts=starts,
                    scalars={"loss": float(2.0 * np.exp(-s / 3000) + 0.01 * rng.random())},
                    wall_time=1.7e9 + s, duration=float(starts[-1] + op_stats["host_ns"][-1]) / 1e9,
                )
            )  # fmt: skip
            if s % 1000 == 999:
                w.flush()
                _log(f"written {s + 1}/{steps} steps")
    return run


def time_timeline(run_path: str | os.PathLike[str], module_glob: str) -> float:
    """Best of 3: seconds ``replayer timeline RUN --metric norm --module GLOB -o x.png`` takes in
    a fresh process (imports included), as a user runs it."""
    best = math.inf
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "replayer.cli", "timeline", str(run_path), "--metric", "norm"]
        cmd += ["--module", module_glob, "-o", str(Path(d) / "timeline.png")]
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--quick", action="store_true", help="1,000 steps")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument(
        "--timeline-steps", type=int, default=100_000, help="the longer run replayer timeline reads"
    )
    p.add_argument("--tmp", default=None, help="directory for the run and export (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="leave the run and the export in place")
    args = p.parse_args()
    try:
        import duckdb
        import pyarrow

        from tracefmt.analysis import ExportOptions, query_export, to_parquet
    except ImportError as e:
        _log(f"needs the analysis extra ({e}): pip install 'tracefmt[analysis]'")
        raise SystemExit(2) from e
    steps = 1_000 if args.quick else args.steps
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="tracefmt-bench-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        run = synthetic_run(tmp / "run", steps, layers=args.layers)
        write_s = time.perf_counter() - t0
        graph = mlp_graph(args.layers)
        _log(f"run written in {write_s:.1f} s; exporting")
        first = to_parquet(run, tmp / "run.parquet")
        again = to_parquet(run, tmp / "run.parquet", ExportOptions(overwrite=True))
        summary = min(first, again, key=lambda s: s.seconds)
        _log(f"exported {summary.rows:,} rows in {summary.seconds:.2f} s; querying")
        times, rows = [], 0
        for _ in range(3):
            t0 = time.perf_counter()
            rows = len(query_export(tmp / "run.parquet", QUERY).rows)
            times.append(time.perf_counter() - t0)
        long_steps = steps * 10 if args.quick else args.timeline_steps
        _log(f"timing replayer timeline over {steps:,} steps; then writing {long_steps:,} steps")
        timeline = {str(steps): round(time_timeline(run, TIMELINE_MODULE), 2)}
        shutil.rmtree(tmp / "run.parquet", ignore_errors=True)
        t0 = time.perf_counter()
        long_run = synthetic_run(tmp / "long", long_steps, layers=args.layers)
        long_write_s = time.perf_counter() - t0
        timeline[str(long_steps)] = round(time_timeline(long_run, TIMELINE_MODULE), 2)
        out: dict[str, Any] = {
            "bench": "analysis",
            "run": {
                "steps": steps,
                "ops_per_step": graph.num_ops,
                "tensors_per_step": graph.num_tensors,
                "bytes": sum(f.stat().st_size for f in run.iterdir()),
                "write_s": round(write_s, 2),
            },
            "to_parquet": {
                "rows": summary.rows,
                "rows_per_s": round(summary.rows_per_s),
                "bytes": summary.bytes,
                "seconds": round(summary.seconds, 3),
                "seconds_first": round(first.seconds, 3),
                "by_table": {t.name: {"rows": t.rows, "bytes": t.bytes} for t in summary.tables},
            },
            "duckdb_query_s": round(min(times), 3),
            "duckdb_query_rows": rows,
            "duckdb_query": " ".join(QUERY.split()),
            # seconds of `replayer timeline RUN --metric norm --module layers.3` in a fresh
            # process (imports included) per run length; goal: under 10 s at 100,000 steps
            "timeline_s": timeline,
            "timeline_module": TIMELINE_MODULE,
            "long_run_write_s": round(long_write_s, 1),
            "env": {
                "cpus": os.cpu_count(),
                "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "python": platform.python_version(),
                "tracefmt": tracefmt.__version__,
                "pyarrow": pyarrow.__version__,
                "duckdb": duckdb.__version__,
                "numpy": np.__version__,
            },
        }
    finally:
        if args.keep:
            _log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
