"""Write throughput and bytes on disk: tracefmt value filters vs torch.save, safetensors, np.save.

Run: ``python bench/format_write.py`` (``--quick`` for a smaller, noisier run).  Progress goes to
stderr; stdout gets exactly one JSON line.

Every method writes the *same* tensors in one process, into page cache: no method calls fsync
(``"fsync": false`` in the JSON; tracefmt writers are opened with ``fsync=False``), and each file is
deleted after it is measured.  Methods run round-robin, ``reps`` rounds, so drift in the machine
hits them alike; in each round a method writes twice in a row and the second write is timed (the
steady state of a process that writes repeatedly: allocator and page-cache pages warm, the graph
digest cached).  Timings on a shared machine are noisy: ``env.loadavg`` records the 1-minute load
average before and after.

The tensors are a mix of four kinds, about the same number of bytes each:

- ``activation``: ``randn`` float32 (incompressible mantissas);
- ``relu``: ``max(randn, 0)`` float32, half of it zeros;
- ``bf16_weight``: ``0.02 * randn`` rounded to bfloat16 (stored as raw 16-bit words);
- ``bf16_like``: ``randn`` float32 with the low 16 mantissa bits zeroed (bf16 values kept in fp32).

Figures (all in the JSON):

- ``raw_bytes``: the tensors' bytes (numpy ``nbytes``), the same for every method.
- ``methods.<m>.mb_per_s``: ``raw_bytes / 1e6`` divided by the best (lowest) wall time of the
  ``reps`` timed runs of the whole write: open the file, write every tensor, close.  For tracefmt that is
  ``TraceWriter(...)``, one ``write_step`` (graph interning, per-tensor fingerprints, values),
  ``flush()`` and ``close()``.  ``mb_per_s_median`` uses the median time.
- ``methods.<m>.bytes``: the file's size on disk (``os.path.getsize``).
- ``methods.<m>.speed_vs_np_save`` / ``size_vs_np_save``: the method's ``mb_per_s`` / ``bytes``
  divided by raw ``np.save``'s (every tensor ``np.save``d into one file in turn).
- ``methods.<m>.speed_vs_torch_save``: ``mb_per_s`` over ``torch.save``'s (when torch is installed).
  ``torch.save`` writes a dict of tensors (bf16 as ``torch.bfloat16``); safetensors writes the
  storage arrays with ``safetensors.numpy.save_file`` (bf16 as its raw ``uint16`` words).
- ``per_kind.<filter>.<kind>``: for each compressing tracefmt filter and each kind alone,
  ``ratio`` (raw bytes / stored bytes of the value heaps; > 1 is smaller) and ``mb_per_s``
  (best of ``reps`` consecutive writes).  The fast filter is ``fast_filter`` (the ``fast`` alias).
- ``goals``: default (``none``) at least as fast as torch.save; the fast filter at least half
  torch.save's speed and at least 2x smaller on ``bf16_like`` data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import ml_dtypes
import numpy as np

import tracefmt
from tracefmt import DType, GraphBuilder, Role, StepRecord, TraceWriter
from tracefmt.filters import ALIASES
from tracefmt.records import Graph, empty_stats

KINDS = ("activation", "relu", "bf16_weight", "bf16_like")
# Shapes per kind, cycled until the kind holds its share of bytes (a GPT-2-small-like layer).
SHAPES: dict[str, list[tuple[int, ...]]] = {
    "activation": [(8, 128, 768), (8, 128, 3072), (8, 12, 128, 128)],
    "relu": [(8, 128, 3072), (8, 128, 768)],
    "bf16_weight": [(768, 3072), (3072, 768), (768, 768), (768,)],
    "bf16_like": [(768, 3072), (8, 128, 768), (768, 768)],
}
TRACEFMT_FILTERS = tuple(dict.fromkeys(("none", ALIASES["fast"], "blosc2-zstd", "blosc2-lz4", "zstd")))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_tensor(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.float32)
    if kind == "relu":
        np.maximum(x, 0, out=x)
    elif kind == "bf16_weight":
        return (x * 0.02).astype(ml_dtypes.bfloat16)
    elif kind == "bf16_like":
        x.view(np.uint32)[...] &= np.uint32(0xFFFF0000)
    return x


def make_tensors(bytes_per_kind: int, seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, name, array)`` for every tensor of the mix."""
    rng = np.random.default_rng(seed)
    out = []
    for kind in KINDS:
        total, i = 0, 0
        while total < bytes_per_kind:
            shape = SHAPES[kind][i % len(SHAPES[kind])]
            a = make_tensor(kind, shape, rng)
            out.append((kind, f"{kind}.{i}", a))
            total += a.nbytes
            i += 1
    return out


def storage(a: np.ndarray) -> np.ndarray:
    """The array's raw storage: bfloat16 as uint16 words, everything else unchanged."""
    return a.view(np.uint16) if a.dtype == ml_dtypes.bfloat16 else a


def make_graph(tensors: list[tuple[str, str, np.ndarray]]) -> Graph:
    g = GraphBuilder()
    for kind, name, a in tensors:
        dtype = DType.BFLOAT16 if a.dtype == ml_dtypes.bfloat16 else DType.FLOAT32
        role = Role.PARAMETER if kind == "bf16_weight" else Role.ACTIVATION
        g.add_tensor(dtype, a.shape, role=role, name=name)
    return g.finish()


# -- writers: each takes (path) and writes the whole set -------------------------------------------
def tracefmt_writer(
    tensors: list[tuple[str, str, np.ndarray]], values_filter: str
) -> Callable[[Path], None]:
    graph = make_graph(tensors)
    values = {i: a for i, (_, _, a) in enumerate(tensors)}
    stats = empty_stats(len(tensors))

    def write(path: Path) -> None:
        # A fresh record per run: the graph digest is cached on the Graph, as it is for a recorder
        # whose graph repeats; the first run pays it.
        with TraceWriter(path, values_filter=values_filter, fsync=False, overwrite=True) as w:
            w.write_step(StepRecord(step=0, graph=graph, stats=stats, values=values))
            w.flush()

    return write


def np_save_writer(tensors: list[tuple[str, str, np.ndarray]]) -> Callable[[Path], None]:
    arrays = [storage(a) for _, _, a in tensors]

    def write(path: Path) -> None:
        with open(path, "wb") as f:
            for a in arrays:
                np.save(f, a, allow_pickle=False)

    return write


def safetensors_writer(tensors: list[tuple[str, str, np.ndarray]]) -> Callable[[Path], None]:
    from safetensors.numpy import save_file

    arrays = {name: storage(a) for _, name, a in tensors}

    def write(path: Path) -> None:
        save_file(arrays, str(path))

    return write


def torch_writer(tensors: list[tuple[str, str, np.ndarray]]) -> Callable[[Path], None] | None:
    try:
        import torch
    except ImportError:
        return None
    state = {}
    for _, name, a in tensors:
        t = torch.from_numpy(storage(a))
        state[name] = t.view(torch.bfloat16) if a.dtype == ml_dtypes.bfloat16 else t

    def write(path: Path) -> None:
        torch.save(state, path)

    return write


def time_methods(
    methods: dict[str, Callable[[Path], None]], tmp: Path, reps: int
) -> dict[str, tuple[list[float], int]]:
    times: dict[str, list[float]] = {m: [] for m in methods}
    sizes: dict[str, int] = {}
    for r in range(reps):
        for name, write in methods.items():
            path = tmp / f"{name}.out"
            for _ in range(2):  # time the second of two writes: the first warms buffers
                t0 = time.perf_counter()
                write(path)
                dt = time.perf_counter() - t0
                sizes[name] = os.path.getsize(path)
                path.unlink()
            times[name].append(dt)
        log(f"round {r + 1}/{reps}: " + ", ".join(f"{m} {times[m][-1]:.3f}s" for m in methods))
    return {m: (times[m], sizes[m]) for m in methods}


def stored_value_bytes(path: Path) -> int:
    with tracefmt.open(path) as t:
        return sum(d.stored_bytes for d in t.rank_file().dataset_sizes() if d.path.startswith("data/"))


def per_kind(
    tensors: list[tuple[str, str, np.ndarray]], tmp: Path, reps: int
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for f in TRACEFMT_FILTERS[1:]:
        out[f] = {}
        for kind in KINDS:
            subset = [t for t in tensors if t[0] == kind]
            raw = sum(a.nbytes for _, _, a in subset)
            write = tracefmt_writer(subset, f)
            path = tmp / f"kind-{f}-{kind}.tft.h5"
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                write(path)
                best = min(best, time.perf_counter() - t0)
            out[f][kind] = {
                "ratio": round(raw / stored_value_bytes(path), 3),
                "mb_per_s": round(raw / 1e6 / best, 1),
            }
            path.unlink()
        log(f"per kind {f}: {out[f]}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about 40 MB instead of 320 MB, 2 rounds")
    p.add_argument("--reps", type=int, default=None, help="rounds (default 9, quick 2)")
    p.add_argument("--tmp", default=None, help="directory for the files (default: a temp dir)")
    args = p.parse_args()
    bytes_per_kind = (10 if args.quick else 80) << 20
    reps = args.reps or (2 if args.quick else 9)
    load_before = os.getloadavg()[0]
    log("making tensors...")
    tensors = make_tensors(bytes_per_kind)
    raw = sum(a.nbytes for _, _, a in tensors)
    log(f"{len(tensors)} tensors, {raw / 1e6:.1f} MB")
    methods: dict[str, Callable[[Path], None]] = {
        f"tracefmt:{f}": tracefmt_writer(tensors, f) for f in TRACEFMT_FILTERS
    }
    tw = torch_writer(tensors)
    if tw is not None:
        methods["torch.save"] = tw
    methods["safetensors"] = safetensors_writer(tensors)
    methods["np.save"] = np_save_writer(tensors)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="tracefmt-bench-") as d:
        tmp = Path(d)
        for write in methods.values():  # warm-up: imports, plugin loading, digest cache
            write(tmp / "warm.out")
            (tmp / "warm.out").unlink()
        results = time_methods(methods, tmp, reps)
        kinds = per_kind(tensors, tmp, reps)
    base_speed = raw / min(results["np.save"][0])
    base_size = results["np.save"][1]
    torch_speed = raw / min(results["torch.save"][0]) if "torch.save" in results else None
    out_methods: dict[str, dict[str, Any]] = {}
    for m, (times, size) in results.items():
        speed = raw / min(times)
        out_methods[m] = {
            "mb_per_s": round(speed / 1e6, 1),
            "mb_per_s_median": round(raw / statistics.median(times) / 1e6, 1),
            "bytes": size,
            "speed_vs_np_save": round(speed / base_speed, 3),
            "size_vs_np_save": round(size / base_size, 4),
            "speed_vs_torch_save": None if torch_speed is None else round(speed / torch_speed, 3),
        }
    fast = f"tracefmt:{ALIASES['fast']}"
    goals: dict[str, Any] = {
        "default_at_least_torch_save_speed": None
        if torch_speed is None
        else out_methods["tracefmt:none"]["speed_vs_torch_save"] >= 1.0,
        "fast_at_least_half_torch_save_speed": None
        if torch_speed is None
        else out_methods[fast]["speed_vs_torch_save"] >= 0.5,
        "fast_at_least_2x_smaller_on_bf16_like": kinds[ALIASES["fast"]]["bf16_like"]["ratio"] >= 2.0,
    }
    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    print(
        json.dumps(
            {
                "bench": "format_write",
                "quick": args.quick,
                "reps": reps,
                "timing": "best of reps",
                "fsync": False,
                "target": "page cache",
                "raw_bytes": raw,
                "tensors": len(tensors),
                "bytes_by_kind": {k: sum(a.nbytes for kk, _, a in tensors if kk == k) for k in KINDS},
                "fast_filter": ALIASES["fast"],
                "methods": out_methods,
                "per_kind": kinds,
                "goals": goals,
                "env": {
                    "cpus": os.cpu_count(),
                    "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "python": platform.python_version(),
                    "tracefmt": tracefmt.__version__,
                    "h5py": h5py.version.version,
                    "hdf5": h5py.version.hdf5_version,
                    "numpy": np.__version__,
                    "torch": torch_version,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
