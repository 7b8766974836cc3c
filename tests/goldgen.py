"""Write the golden traces of one format version (1.1 on) with the tracefmt that is importable.

    PYTHONPATH=/tmp/gold-1.3 python tests/goldgen.py tests/data/1.3    # tracefmt of that commit
    make golden                                # the current version, when its goldens are missing

Each format version's goldens are written once, by the code of the commit that introduced the
version (check it out with ``git worktree add``, put it first on ``PYTHONPATH``), and then kept:
later versions must read them as they are.  This script therefore refuses a directory that exists.
It uses only numpy and the public writer API of the tracefmt it finds (no ``tests`` module, which
changes with the checkout), and gates what it writes on that tracefmt's ``FORMAT_MINOR``, so that
each version's goldens exercise what that version added:

- 1.1: a step's own op attributes and storage offsets (``add.Tensor``'s ``alpha`` and
  ``select.int``'s ``index`` change from step to step; all steps share one graph row);
- 1.2: the run manifest ``run.json``, distributed provenance, the ``"c10d"`` attributes of an
  all-reduce and a send;
- 1.3: op start times (one op unmeasured);
- 1.4: light steps between the full steps (one holds a NaN gradient);
- 1.5: module tables (one step without, one with the bias frozen);
- 1.6: RNG states (step 0: the CPU's and a CUDA device's; step 2: the same CPU state, stored
  once, and a new CUDA state; step 4: none).

Every version writes ``run/``: two rank files of a 2-rank run of a tiny network whose values are
small integers, so that ``replayer check`` re-executes its aten ops exactly.  ``manifest.json`` is
computed here from the records written (never by reading the files back), in the form
``tests/golden.py``'s ``describe_*`` functions give for what the reader returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and os.path.samefile(sys.path[0], os.path.dirname(__file__) or "."):
    del sys.path[0]  # run as a script: tests/tracefmt/ must not shadow the tracefmt package

import numpy as np

import tracefmt
import tracefmt.writer
from tracefmt import DType, Event, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt import _layout as L
from tracefmt.records import Graph, empty_op_stats, empty_stats
from tracefmt.stats import histogram, tensor_stats

MINOR = L.FORMAT_MINOR
RUN_ID = "golden-run-0001"
WORLD = 2
FULL_STEPS = (0, 2, 4)  # steps 0 and 4 with every value, step 2 with statistics only
LIGHT_STEPS = (1, 3)  # from 1.4 on
#: (alpha of add.Tensor, index of select.int) per full step: the step's own attributes (1.1)
STEP_ARGS = {0: (1.0, 0), 2: (2.0, 2), 4: (-1.0, 3)}
REPLAYED_OPS = [0, 1, 2, 3, 4]  # the aten ops; the c10d ops have no reference semantics


def bits(x: float) -> str:
    return f"{struct.unpack('<Q', struct.pack('<d', float(x)))[0]:016x}"


def _attrs_text(attrs: dict[str, Any] | None) -> str:
    """The format's attribute encoding (sorted keys, no whitespace) of these plain attributes."""
    return json.dumps(attrs or {}, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _c10d(rank: int, kind: str) -> dict[str, Any]:
    ranks = list(range(WORLD))
    joined = ",".join(map(str, ranks))
    return {
        "group": f"0:{hashlib.sha1(joined.encode('ascii')).hexdigest()[:8]}",
        "group_name": "0",
        "group_ranks": ranks,
        "kind": kind,
        "seq": 0,
        "coalesced": None,
        "reduce_op": "SUM" if kind == "collective" else None,
        "root": None,
        "peer": (rank + 1) % WORLD if kind == "p2p" else None,
        "rank": rank,
        "backend_seq": None,
    }


def _graph(rank: int, step: int) -> Graph:
    alpha, index = STEP_ARGS[step]
    g = GraphBuilder()

    def t(shape: tuple[int, ...], **kw: Any) -> int:
        strides = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
        return g.add_tensor(DType.FLOAT32, shape, strides=strides, **kw)

    x = t((4, 4), role=Role.INPUT, name="x")
    w = t((4, 4), role=Role.PARAMETER, name="fc.weight")
    b = t((4,), role=Role.PARAMETER, name="fc.bias")
    y = t((4, 4), producer=g.num_ops)
    g.add_op("aten::mm.default", phase=Phase.FORWARD, module="fc", inputs=[x, w], outputs=[y])
    z = t((4, 4), producer=g.num_ops)
    g.add_op(
        "aten::add.Tensor", phase=Phase.FORWARD, module="fc", inputs=[y, b], outputs=[z],
        attrs={"alpha": alpha},
    )  # fmt: skip
    a = t((4, 4), producer=g.num_ops)
    g.add_op("aten::relu.default", phase=Phase.FORWARD, module="act", inputs=[z], outputs=[a])
    s = g.add_tensor(DType.FLOAT32, (4,), strides=(1,), producer=g.num_ops, storage_offset=4 * index)
    g.add_op(
        "aten::select.int", phase=Phase.FORWARD, module="pick", inputs=[a], outputs=[s],
        attrs={"dim": 0, "index": index},
    )  # fmt: skip
    loss = t((), producer=g.num_ops, name="loss")
    g.add_op("aten::sum.default", phase=Phase.FORWARD, inputs=[s], outputs=[loss])
    grad = t((4, 4), role=Role.GRADIENT, name="fc.weight.grad")
    reduced = t((4, 4), role=Role.GRADIENT, name="fc.weight.grad", producer=g.num_ops, version=1)
    collective: dict[str, Any] = {"async_op": False}
    p2p: dict[str, Any] = {"dst": (rank + 1) % WORLD, "tag": 0}
    if MINOR >= 2:
        collective["c10d"], p2p["c10d"] = _c10d(rank, "collective"), _c10d(rank, "p2p")
    g.add_op(
        "c10d::allreduce_.default", phase=Phase.BACKWARD, inputs=[(grad, 0, 0)],
        outputs=[reduced], attrs=collective,
    )  # fmt: skip
    g.add_op("c10d::send.default", phase=Phase.BACKWARD, inputs=[(s, 0, 0)], attrs=p2p)
    return g.finish()


def _ints(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-3, 4, shape).astype(np.float32)


def _arrays(rank: int, step: int) -> list[np.ndarray]:
    """The values of every tensor of :func:`_graph` (exact in float32: small integers)."""
    alpha, index = STEP_ARGS[step]
    rng = np.random.default_rng(1000 * rank + step)
    x, w, b = _ints(rng, (4, 4)), _ints(rng, (4, 4)), _ints(rng, (4,))
    y = x @ w
    z = (y + np.float32(alpha) * b).astype(np.float32)
    a = np.maximum(z, np.float32(0))
    s = a[index].copy()
    loss = np.array(s.sum(), dtype=np.float32)
    grads = [_ints(np.random.default_rng(99 + 1000 * r + step), (4, 4)) for r in range(WORLD)]
    return [x, w, b, y, z, a, s, loss, grads[rank], sum(grads[1:], grads[0])]


def _modules(step: int) -> Any:
    """The network's module table (1.5): none at step 2, the bias frozen at step 4."""
    if step == 2:
        return None
    from tracefmt import ModuleInfo, ModuleTable

    bias = 0 if step == 4 else 4
    return ModuleTable(
        (
            ModuleInfo("", "golden.Net", 20, 16 + bias, 0, 0, 80),
            ModuleInfo("act", "torch.nn.modules.activation.ReLU", 0, 0, 0, 0, 0),
            ModuleInfo("fc", "torch.nn.modules.linear.Linear", 20, 16 + bias, 20, 16 + bias, 80),
        )
    )


def _rng_states(rank: int, step: int) -> Any:
    """The generators' states at the step's start (1.6): a Mersenne-Twister-sized CPU state that
    steps 0 and 2 share (step 1 drew nothing), a CUDA seed and offset, none at step 4."""
    if step == 4:
        return ()
    from tracefmt import RngState

    cpu = np.random.default_rng(100 + rank).integers(0, 256, 5056, dtype=np.uint8).tobytes()
    cuda = np.array([4321 + rank, 64 * step], dtype="<u8").tobytes()
    return (RngState("cpu", cpu), RngState("cuda:0", cuda))


def describe_rng_states(states: Any) -> list[list[Any]]:
    """A step's RNG states (1.6) as (device, bytes, SHA-256 of the bytes)."""
    return [[s.device, len(s.state), hashlib.sha256(s.state).hexdigest()] for s in states]


def _record(rank: int, step: int, hist_bins: int) -> StepRecord:
    graph = _graph(rank, step)
    arrays = _arrays(rank, step)
    stats = empty_stats(graph.num_tensors)
    for i, array in enumerate(arrays):
        stats[i] = tensor_stats(array, DType.FLOAT32)
    op_stats = empty_op_stats(graph.num_ops)
    op_stats["host_ns"] = [1000 * (i + 1) + step for i in range(graph.num_ops)]
    extra: dict[str, Any] = {}
    if MINOR >= 3:
        extra["op_starts"] = [-1 if i == 2 else 5000 * i + step for i in range(graph.num_ops)]
    if MINOR >= 5:
        extra["modules"] = _modules(step)
    if MINOR >= 6:
        extra["rng_states"] = _rng_states(rank, step)
    return StepRecord(
        step=step,
        graph=graph,
        stats=stats,
        op_stats=op_stats,
        values={} if step == 2 else dict(enumerate(arrays)),
        histograms={3: histogram(arrays[3].astype(np.float64), hist_bins)} if hist_bins else {},
        events=[Event("note", f"golden step {step} of rank {rank}", op=1, tensor=4)],
        scalars={"loss": float(arrays[7]), "lr": 0.125},
        wall_time=1_790_000_000.0 + step,
        duration=0.25,
        **extra,
    )


def _light_record(rank: int, step: int) -> Any:
    """A light step (1.4): an output row, a gradient row (NaN at step 3) and a parameter row."""
    from tracefmt.light import LightFlags, LightKind, LightStepRecord, empty_light_rows

    names = ["fc", "fc.weight"]
    rows = empty_light_rows(3)
    kinds = (LightKind.OUTPUT, LightKind.GRADIENT, LightKind.PARAMETER)
    for i, (name, kind) in enumerate(zip((0, 1, 1), kinds, strict=True)):
        rows[i]["name"], rows[i]["kind"], rows[i]["numel"] = name, int(kind), 16
        rows[i]["flags"] = int(LightFlags.MOMENTS | LightFlags.COUNTS)
        lo = -1.5 - i - rank
        rows[i]["min"], rows[i]["max"], rows[i]["mean"] = lo, 2.0 + step, 0.25
        rows[i]["std"], rows[i]["norm"] = 1.0 + i, 4.0 + i
    if step == 3:
        rows[1]["nan"] = 2
    return LightStepRecord(
        step=step,
        names=names,
        rows=rows,
        scalars={"loss": 2.5 + step},
        events=[Event("note", f"light step {step}")],
        wall_time=1_790_000_000.0 + step,
        duration=0.0625,
    )


# -- what the reader must return (the form of tests/golden.py's describe_* functions) ------------


def _stats(row: Any) -> dict[str, Any]:
    flags = int(row["flags"])
    out: dict[str, Any] = {
        k: bits(row[k]) if flags & L.STAT_MOMENTS else None
        for k in ("min", "max", "mean", "std", "norm")
    }
    out.update({k: int(row[k]) if flags & L.STAT_COUNTS else None for k in ("nan", "inf", "zero")})
    out["fingerprint"] = int(row["fingerprint"]) if flags & L.STAT_FINGERPRINT else None
    return out


def describe_record(record: StepRecord, graph_row: int) -> dict[str, Any]:
    g, stats = record.graph, record.stats
    ops = []
    for i, op in enumerate(g.ops):
        described = {
            "name": op.name,
            "phase": op.phase.label,
            "module": op.module,
            "inputs": [t for t, _, _ in op.inputs],
            "input_args": [[a, item] for _, a, item in op.inputs],
            "outputs": list(op.outputs),
            "attrs": _attrs_text(None if op.attrs is None else json.loads(op.attrs)),
            "source": op.source,
            "host_ns": int(record.op_stats[i]["host_ns"]) if record.op_stats is not None else None,
            "device_ns": None,
            "mem_bytes": None,
        }
        if MINOR >= 3:
            start = int(getattr(record, "op_starts")[i])  # noqa: B009 (a 1.3 field)
            described["host_start_ns"] = None if start < 0 else start
        ops.append(described)
    tensors = []
    for i, t in enumerate(g.tensors):
        hist = record.histograms.get(i)
        values = record.values.get(i)
        raw = None if values is None else np.ascontiguousarray(values).tobytes()
        tensors.append(
            {
                "dtype": t.dtype.label,
                "shape": list(t.shape),
                "strides": [] if not t.shape else list(t.strides),
                "device": t.device,
                "role": t.role.label,
                "name": t.name or None,
                "producer": None if t.producer < 0 else t.producer,
                "producer_slot": t.producer_slot,
                "version": t.version,
                "storage_offset": t.storage_offset,
                "stats": None if stats is None else _stats(stats[i]),
                "histogram": None
                if hist is None
                else {"lo": bits(hist[0]), "hi": bits(hist[1]), "counts": [int(c) for c in hist[2]]},
                "values": None
                if raw is None
                else {"nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()},
            }
        )
    counted = stats[(stats["flags"] & L.STAT_COUNTS) != 0]
    out = {
        "step": record.step,
        "graph": graph_row,
        "ops": ops,
        "tensors": tensors,
        "events": [[e.kind, e.message, e.op, e.tensor] for e in record.events],
        "scalars": {k: bits(v) for k, v in record.scalars.items()},
        "wall_time": bits(record.wall_time),
        "duration": bits(record.duration),
        "dropped": record.dropped,
        "has_nan": bool(np.any(counted["nan"])),
        "has_inf": bool(np.any(counted["inf"])),
    }
    if MINOR >= 5:
        table = getattr(record, "modules")  # noqa: B009 (a 1.5 field)
        out["modules"] = None if table is None else [list(dataclasses.astuple(m)) for m in table]
    if MINOR >= 6:
        out["rng_states"] = describe_rng_states(getattr(record, "rng_states"))  # noqa: B009 (1.6)
    return out


def describe_light_record(record: Any) -> dict[str, Any]:
    from tracefmt.light import LightFlags, LightKind

    rows, names = record.rows, record.names
    described = []
    for r in rows:
        flags = int(r["flags"])
        moments, counts = flags & int(LightFlags.MOMENTS), flags & int(LightFlags.COUNTS)
        described.append(
            [names[int(r["name"])], LightKind(int(r["kind"])).label, int(r["numel"])]
            + [bits(r[k]) if moments else None for k in ("min", "max", "mean", "std", "norm")]
            + [int(r[k]) if counts else None for k in ("nan", "inf")]
            + [bool(flags & int(LightFlags.INPUTS_NONFINITE))]
        )
    counted = (rows["flags"] & int(LightFlags.COUNTS)) != 0
    bad = counted & ((rows["nan"] > 0) | (rows["inf"] > 0))
    output = rows["kind"] == int(LightKind.OUTPUT)
    inputs_bad = (rows["flags"] & int(LightFlags.INPUTS_NONFINITE)) != 0
    return {
        "step": record.step,
        "rows": described,
        "scalars": {k: bits(v) for k, v in record.scalars.items()},
        "events": [[e.kind, e.message, e.op, e.tensor] for e in record.events],
        "wall_time": bits(record.wall_time),
        "duration": bits(record.duration),
        "has_nan": bool(np.any(counted & (rows["nan"] > 0))),
        "has_inf": bool(np.any(counted & (rows["inf"] > 0))),
        "nonfinite_created": bool(np.any(bad & output & ~inputs_bad)),
        "nonfinite_state": bool(np.any(bad & ~output))
        or not all(np.isfinite(v) for k, v in record.scalars.items() if k == "loss"),
    }


# -- writing ----------------------------------------------------------------------------------


def _provenance(rank: int) -> Any:
    p = tracefmt.writer.make_provenance({"generator": "tests/goldgen.py"})
    extra: dict[str, Any] = dict(p.extra)
    if MINOR >= 2:
        extra["distributed"] = {
            "rank": rank,
            "world_size": WORLD,
            "local_rank": rank,
            "local_world_size": WORLD,
            "node_rank": 0,
            "hostname": "golden",
            "pid": 1000 + rank,
            "run_id_source": "argument",
            "backend": "gloo",
        }
    return dataclasses.replace(
        p, created="2026-12-02T00:00:00+00:00", host="golden", torch=None, extra=extra
    )


def _write_rank(run: Path, rank: int) -> dict[str, Any]:
    hist_bins = 4 if rank == 0 else 0
    values_filter = "gzip"
    records = [_record(rank, s, hist_bins) for s in FULL_STEPS]
    light = [_light_record(rank, s) for s in LIGHT_STEPS] if MINOR >= 4 else []
    provenance = _provenance(rank)
    kwargs: dict[str, Any] = {"run_id": RUN_ID, "rank": rank, "world_size": WORLD}
    kwargs.update(values_filter=values_filter, hist_bins=hist_bins, fsync=False)
    original = tracefmt.writer.make_provenance
    tracefmt.writer.make_provenance = lambda extra=None: provenance  # 1.1 takes no provenance=
    try:
        with TraceWriter(tracefmt.rank_file_path(run, rank), **kwargs) as w:
            for record in sorted([*records, *light], key=lambda r: r.step):
                if isinstance(record, StepRecord):
                    w.write_step(record)
                else:
                    w.write_light_step(record)
                w.flush()
    finally:
        tracefmt.writer.make_provenance = original
    described: dict[str, Any] = {
        "rank": rank,
        "world_size": WORLD,
        "values_filter": values_filter,
        "hist_bins": hist_bins,
        "provenance": json.loads(provenance.to_json()),
        "steps": [describe_record(r, 0) for r in records],  # one graph row: attrs are per step
        "replay": {str(r.step): REPLAYED_OPS for r in records if r.values},
    }
    if MINOR >= 4:
        described["light_steps"] = [describe_light_record(r) for r in light]
    return described


def _write_run_manifest(run: Path) -> dict[str, Any]:
    from tracefmt import ProcessGroupInfo, RunManifest, group_id, write_manifest

    everyone = tuple(range(WORLD))
    manifest = RunManifest(
        run_id=RUN_ID,
        world_size=WORLD,
        expected_ranks=everyone,
        run_id_source="argument",
        process_groups=(ProcessGroupInfo(group_id("0", everyone), "0", everyone, "gloo"),),
        created="2026-12-02T00:00:00Z",
        writer="tests/goldgen.py",
    )
    write_manifest(run, manifest)
    data: dict[str, Any] = manifest.to_dict()
    return data


def generate(directory: Path) -> dict[str, Any]:
    """Write this version's golden traces into ``directory`` (which must not exist) and return
    their manifest."""
    if directory.exists():
        raise SystemExit(
            f"Refusing to write golden traces into {directory}: it exists. A format version's "
            "goldens are written once, by the version that introduced it, and never regenerated."
        )
    run = directory / "run"
    run.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "format_version": L.FORMAT_VERSION,
        "generator": "tests/goldgen.py",
        "run_id": RUN_ID,
        "files": {f"run/rank-{r:05d}.tft.h5": _write_rank(run, r) for r in range(WORLD)},
    }
    if MINOR >= 2:
        manifest["run_manifest"] = _write_run_manifest(run)
    return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    directory = Path(argv[0])
    manifest = generate(directory)
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (directory / "manifest.json").write_text(text)
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    print(
        f"wrote the {L.FORMAT_VERSION} goldens with {tracefmt.__file__} to {directory} ({total} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
