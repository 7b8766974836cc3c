"""What archiving a run costs: bytes per step of the FACTS GPT by value selection, and ``tracefmt
pack``'s throughput and ratio per filter.

Run: ``python bench/archive.py`` (``--size small`` for the example's default model, quicker;
``--steps N`` recorded steps per configuration).  Progress goes to stderr; stdout gets exactly one
JSON line.

The model is the FACTS nanoGPT (4 layers, d=256, 4 heads, batch 8 x 128, AdamW with its default
per-parameter loop; ``bench/overhead.py``'s ``facts`` size).  One training step runs unrecorded
(AdamW creates its state in it), then ``--steps`` steps are recorded, once per configuration:

- ``stats``: ``capture=("graph", "stats")``, the default;
- ``leaves``: ``values="leaves"``, what a step starts from (parameters, buffers and optimizer state
  as they enter it, the batch, random draws): ``null`` with ``leaves_reason`` when this recorder's
  options do not accept ``"leaves"``;
- ``all``: ``values="all"``, every tensor's values.

``bytes_per_step`` is each run's rank file size over its recorded steps.  Then the ``all`` run is
packed with each filter of ``tracefmt pack`` (``pack``: ``mb_per_s``, source megabytes (10^6
bytes) per second of the whole pack, hashing the sources included; ``ratio``, source bytes over
archive bytes).  A filter whose plugin (hdf5plugin) is missing is ``null`` with a reason.  The
machine is shared: times are noisy, sizes are not.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import recorder
import tracefmt
from recorder.examples.gpt import build
from tracefmt.errors import MissingFilterError
from tracefmt.pack import PACK_FILTERS, pack

SIZES: dict[str, dict[str, int]] = {
    "facts": {"layers": 4, "embd": 256, "heads": 4, "block": 128, "batch": 8},
    "small": {"layers": 2, "embd": 64, "heads": 4, "block": 64, "batch": 16},
}
CONFIGS: dict[str, dict[str, Any]] = {
    "stats": {"capture": ("graph", "stats")},
    "leaves": {"values": "leaves"},
    "all": {"values": "all"},
}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def leaves_supported() -> str | None:
    """None when ``recorder`` accepts ``values="leaves"``, else why not."""
    try:
        recorder.Options(values="leaves")
    except (TypeError, ValueError) as e:
        return f"recorder.Options does not accept values='leaves' here: {e}"
    return None


def _run_size(run: Path) -> int:
    return sum(p.stat().st_size for p in run.glob("rank-*.tft.h5"))


def record_run(size: str, config: dict[str, Any], steps: int, seed: int, run: Path) -> dict[str, Any]:
    """Record ``steps`` steps after one unrecorded step; return bytes and seconds."""
    torch.manual_seed(seed)
    model, opt, data = build(seed=seed, **SIZES[size])
    batches = [data.batch(i) for i in range(steps + 1)]
    t0 = time.perf_counter()
    with recorder.record(run, model=model, overwrite=True, schedule=lambda s: s >= 1, **config) as rec:
        for i in range(steps + 1):
            x, y = batches[i]
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            rec.step()
    seconds = time.perf_counter() - t0
    with tracefmt.open(run) as trace:
        recorded = len(trace.steps())
    total = _run_size(run)
    return {
        "steps": recorded,
        "bytes": total,
        "bytes_per_step": round(total / recorded) if recorded else None,
        "seconds": round(seconds, 2),
    }


def pack_filters(run: Path, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in PACK_FILTERS:
        _log(f"pack with {name} ...")
        try:
            s = pack(run, tmp / f"archive-{name}", values_filter=name, overwrite=True)
        except MissingFilterError as e:
            out[name] = None
            out[f"{name}_reason"] = str(e)
            continue
        out[name] = {
            "mb_per_s": round(s.mb_per_s, 1),
            "ratio": round(s.ratio, 3),
            "seconds": round(s.seconds, 2),
            "source_bytes": s.source_bytes,
            "output_bytes": s.output_bytes,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="facts")
    p.add_argument("--steps", type=int, default=2, help="recorded steps per configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where to write the runs (default: a temporary dir)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict[str, Any] = {
        "bench": "archive",
        "size": args.size,
        "model": SIZES[args.size],
        "steps": args.steps,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tracefmt": tracefmt.__version__,
        "note": "one run on a shared machine: sizes are exact, times noisy",
    }
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-archive-") as name:
        tmp = Path(name)
        per_step: dict[str, Any] = {}
        runs: dict[str, dict[str, Any]] = {}
        why_not_leaves = leaves_supported()
        for config, options in CONFIGS.items():
            if config == "leaves" and why_not_leaves is not None:
                per_step[config] = None
                result["leaves_reason"] = why_not_leaves
                continue
            _log(f"record {config} ...")
            runs[config] = record_run(args.size, options, args.steps, args.seed, tmp / config)
            per_step[config] = runs[config]["bytes_per_step"]
        result["bytes_per_step"] = per_step
        result["runs"] = runs
        result["pack"] = pack_filters(tmp / "all", tmp)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
