"""Scale of the cross-rank analysis: ``replayer ranks`` and ``tracefmt info`` on 16 to 256 ranks.

Run: ``python bench/ranks.py`` (``--quick`` for 4 and 16 ranks; ``--ranks 16,64,256`` to choose;
``--cache DIR`` keeps the generated runs there and reuses them).  Progress goes to stderr; stdout
gets exactly one JSON line.

For each rank count R a synthetic data-parallel run of R rank files with ``--steps`` steps each is
written with the tracefmt writer (:mod:`bench.synthetic_ddp`: 271 ops per step, five collectives
with the format's ``"c10d"`` attributes, parameters, gradients and optimizer state with
fingerprints that agree across replicas; graph + statistics, no values).  Its generation time is
reported (``generate_s``) and not counted.  Then each command runs in a fresh process, its stdout
to a file (no terminal: no progress bar), and is measured from outside, ``--repeats`` times (default
3; the fastest counts, since on a shared machine a slower run waited for something else, and the
marginal ratios below compare differences of a few seconds):

- ``replayer ranks RUN --step S`` (S = the middle step): ``replayer_ranks_s`` wall time,
  ``replayer_ranks_peak_mb`` the process's peak resident memory (``ru_maxrss`` of ``wait4``);
- ``tracefmt info RUN``: ``info_s`` and ``info_peak_mb``.

Each must exit 0 (the run is consistent and complete); a run that does not is an error, not a
number.  ``startup_s`` / ``startup_peak_mb`` are a fresh interpreter importing both CLIs and doing
nothing, the fixed part of every number.

``growth`` compares R = largest with R = smallest: ``*_per_rank_ratio`` is the time per rank at
the largest R over the time per rank at the smallest (1.0: linear; below: better, mostly the fixed
startup spread over more ranks); ``*_marginal_ratio`` is the cost of each added rank over the upper
half of the range (the two largest R) over that of the lower half (the two smallest), with the
startup taken out: about 1 when each rank costs the same whatever R is, above when the per-rank
cost grows with R.  ``*_peak_ratio`` is the peak memory ratio.

Goals: ``linear_or_better``: both commands' per-rank ratio at most 1.1 and marginal ratio at
most 1.25 (room for noise on a shared machine); ``ranks256_under_60s``: both commands under 60 s at
256 ranks (false when 256 was not measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.synthetic_ddp import ddp_graph, write_run  # noqa: E402

BIN = Path(sys.executable).parent
COMMANDS = ("replayer_ranks", "info")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(argv: list[str], out: Path) -> tuple[float, float, int]:
    """Run ``argv`` in a fresh process, stdout to ``out``: (wall seconds, peak RSS in MB, exit
    status).  The peak is that one child's ``ru_maxrss`` (kilobytes on Linux)."""
    with out.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode not in (0,):
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err[-2000:]}")
    scale = 1024 if sys.platform != "darwin" else 1
    return wall, usage.ru_maxrss * scale / 2**20, proc.returncode


def _run_dir(base: Path, ranks: int, steps: int, workers: int) -> tuple[Path, float | None]:
    """The run of ``ranks`` ranks under ``base``, written unless a finished one is there; its
    generation time (None when reused)."""
    run = base / f"ddp-r{ranks}-s{steps}"
    done = run / ".complete"
    if done.exists():
        _log(f"reusing {run}")
        return run, None
    if run.exists():
        shutil.rmtree(run)
    start = time.perf_counter()
    last = [0.0]

    def progress(n: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10 or n == total:
            last[0] = time.perf_counter()
            _log(f"  generating {ranks} ranks: {n}/{total} ({last[0] - start:.0f} s)")

    write_run(run, ranks, steps, workers=workers, progress=progress)
    done.write_text("ok\n")
    return run, time.perf_counter() - start


def bench_ranks(run: Path, steps: int, out: Path, repeats: int) -> dict[str, Any]:
    """Each command ``repeats`` times: the fastest wall time (the others waited on the machine),
    the largest peak, and every time measured."""
    step = steps // 2
    row: dict[str, Any] = {}
    for key, argv in (
        ("replayer_ranks", [str(BIN / "replayer"), "ranks", str(run), "--step", str(step)]),
        ("info", [str(BIN / "tracefmt"), "info", str(run)]),
    ):
        samples = [measure(argv, out / f"{run.name}-{key}.txt") for _ in range(repeats)]
        wall = min(w for w, _, _ in samples)
        peak = max(p for _, p, _ in samples)
        row[f"{key}_s"] = round(wall, 3)
        row[f"{key}_s_samples"] = [round(w, 3) for w, _, _ in samples]
        row[f"{key}_peak_mb"] = round(peak, 1)
        _log(f"  {key}: {wall:.2f} s (fastest of {repeats}), {peak:.0f} MB")
    row["file_mb"] = round(sum(p.stat().st_size for p in run.glob("*.h5")) / 2**20, 1)
    return row


def growth(rows: dict[int, dict[str, Any]], startup: float) -> dict[str, Any]:
    sizes = sorted(rows)
    lo, hi = sizes[0], sizes[-1]
    out: dict[str, Any] = {"from": lo, "to": hi}
    for key in COMMANDS:
        t = {r: rows[r][f"{key}_s"] for r in sizes}
        out[f"{key}_per_rank_ratio"] = round((t[hi] / hi) / (t[lo] / lo), 3)
        out[f"{key}_peak_ratio"] = round(rows[hi][f"{key}_peak_mb"] / rows[lo][f"{key}_peak_mb"], 3)
        if len(sizes) >= 3:
            low = (t[sizes[1]] - t[sizes[0]]) / (sizes[1] - sizes[0])
            high = (t[sizes[-1]] - t[sizes[-2]]) / (sizes[-1] - sizes[-2])
            out[f"{key}_marginal_ratio"] = round(high / low, 3) if low > 0 else None
        out[f"{key}_s_per_rank_net_of_startup"] = round(max(t[hi] - startup, 0.0) / hi, 4)
    return out


def goals(rows: dict[int, dict[str, Any]], grow: dict[str, Any]) -> dict[str, bool]:
    linear = all(
        grow[f"{k}_per_rank_ratio"] <= 1.1 and (grow.get(f"{k}_marginal_ratio") or 0) <= 1.25
        for k in COMMANDS
    )
    big = rows.get(256)
    under = big is not None and all(big[f"{k}_s"] < 60 for k in COMMANDS)
    return {"linear_or_better": linear, "ranks256_under_60s": under}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="16,64,256", help="Rank counts, comma-separated.")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="4 and 16 ranks, 10 steps.")
    ap.add_argument("--cache", type=Path, default=None, help="Keep and reuse the runs here.")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command; the fastest counts")
    args = ap.parse_args()
    sizes = [4, 16] if args.quick else sorted({int(x) for x in args.ranks.split(",")})
    steps = 10 if args.quick else args.steps
    if len(sizes) < 2 or min(sizes) < 1 or steps < 1 or args.repeats < 1:
        ap.error("give at least two rank counts of 1 or more, 1 or more steps and repeats")
    base = args.cache or Path(tempfile.mkdtemp(prefix="tracefmt-ranks-"))
    base.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="tracefmt-ranks-out-"))
    graph = ddp_graph(0, 2).graph
    try:
        probe = [sys.executable, "-c", "import replayer.cli, tracefmt.cli"]
        startup, startup_peak, _ = measure(probe, out / "startup.txt")
        _log(f"startup: {startup:.2f} s, {startup_peak:.0f} MB")
        rows: dict[int, dict[str, Any]] = {}
        for r in sizes:
            run, gen = _run_dir(base, r, steps, args.workers)
            _log(f"{r} ranks ({'reused' if gen is None else f'generated in {gen:.1f} s'})")
            rows[r] = {
                "generate_s": None if gen is None else round(gen, 1),
                **bench_ranks(run, steps, out, args.repeats),
            }
    finally:
        if args.cache is None:
            shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    grow = growth(rows, startup)
    result = {
        "bench": "ranks",
        "steps": steps,
        "step_checked": steps // 2,
        "ops_per_step": graph.num_ops,
        "tensors_per_step": graph.num_tensors,
        "collectives_per_step": sum(op.name.startswith("c10d::") for op in graph.ops),
        "capture": "graph+stats",
        "repeats": args.repeats,
        "startup_s": round(startup, 3),
        "startup_peak_mb": round(startup_peak, 1),
        "ranks": {str(r): row for r, row in rows.items()},
        "growth": grow,
        "goals": goals(rows, grow),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
