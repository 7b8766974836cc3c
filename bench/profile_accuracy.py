"""Are the recorder's per-op host times right?  Checked against ``torch.profiler`` on the same steps.

Why: a trace's per-op host time (``OpNode.host_ns``) is what ``tracefmt show --sort time`` ranks
ops by; if it is wrong, users chase ops that were never slow.  The issue's acceptance: for a
recorded Hugging Face GPT-2 step, the recorded host time summed per op name is within 25% (or
20 us) of the profiler's self CPU time for that op name on the same steps, for the 10 most
expensive op names; and no single op of the demo step shows more than 2 ms unless the profiler
shows it too.

Run: ``python bench/profile_accuracy.py`` (needs transformers: ``pip install -e '.[bench]'``;
without it the script exits with status 2); about 20 s on 2 CPU cores, ``--quick`` (3 steps
each) about 10 s.  ``--engine auto|native|python`` is passed to ``record(engine=...)``; the
engine that ran is read back from the trace's provenance (``"recorder_engine"``), and ``"native"``
in the output says whether it was the C++ one.  ``--drain`` flushes the recorder's writer between
steps, so its background thread cannot run during the next step.  Progress goes to stderr;
stdout gets exactly one JSON line.

How it measures.  ``gpt2``: a few warm-up steps, then ``--steps`` steps of bench/hf_models.py's
GPT-2 with 1 torch thread, recorded (``capture=("graph", "stats")``) with ``torch.profiler.profile()``
(no shapes: less of the profiler's own cost) entered outside the recorder around the same steps.
Per op name (the trace's ``aten::mm.default`` is ``aten::mm``), the trace's host times summed
over the recorded steps are compared with the profiler's self CPU time of that name, for the 10
names the profiler finds most expensive; an entry is ``within`` when ``|recorded - profiler| <=
max(25% of profiler, 20 us)``.

The profiler sees the recorder too, so its events are sorted out first, keeping those of the ops
the recorder records.  Under the Python engine an op ``aten::X`` appears as an event ``aten::X``
(the call entering the dispatcher), holding a ``PythonDispatchMode`` event (the recorder's
``__torch_dispatch__``), holding a second ``aten::X`` (the op itself, the only part the recorder
times) next to the recorder's own ops (``detach``, ``clone``, statistics).  The inner event
stands for the op; the outer one and everything else under the recorder's frame are left out.
Of the rest, an event counts when its name is one the trace has and it is not inside another
such event: the op as the recorder sees it, not its sub-ops (the ``aten::copy_`` inside an
``aten::add_`` with a Python scalar, ``aten::index_select`` inside ``aten::embedding``), whose
times the recorder puts in their op's.  So ``profiler_us`` is those events' self time (the
acceptance's figure) and ``profiler_incl_us`` their inclusive time, which is what the recorder
measures (``within_incl``).  ``profiler_raw_us`` is what ``prof.key_averages()`` reports as
``self_cpu_time_total`` for the name: every event of it, the recorder's own ops and sub-ops
included.  The profiler's own per-op cost (its callbacks at the start and end of each event) and
the Python call into the op lie inside the span the Python engine times, so its recorded times
run a few microseconds per op above the profiler's.

``recorder_frames`` counts the recorder frames found.  The native engine is a dispatcher
fallback that runs inside the op's own profiler event; it marks its work before and after the op
with the profiler scopes ``tracefmt::capture_before`` and ``tracefmt::capture_after`` (named in
:data:`RECORDER_FRAMES`), so that work (statistics, bookkeeping) is a child of the op's event,
left out of the op's self time, and the op's own kernel is what both sides time.

Both the profiler and the recorder work inside the ops' spans when they run together: the
profiler's start and end of every event (and of the native engine's two scopes) land in the op's
self time, and the recorder's work inside the op's events changes what the profiler measures.  So
``gpt2`` also runs the same steps of identically seeded models twice more, once recorded without
the profiler and once profiled without the recorder, and compares those (``top10_alone``,
``all_within_alone``): what each tool measures when the other is not inside the ops.

``demo``: the same for ``--demo-steps`` steps of the example ``make demo`` records
(``recorder.examples.gpt`` at its default size, each batch drawn inside its step, the writer
working alongside as in the demo), reporting the longest single recorded op (``max_op_ms``) and
every op name whose longest recorded op took more than 2 ms while the profiler's longest event
of that name (inclusive, inner events as above) took less (``violations``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hf_models import build, require_transformers

import recorder
import tracefmt

#: Profiler event names of a recorder's frame inside an op's event.
RECORDER_FRAMES = frozenset(
    {"PythonDispatchMode", "tracefmt::capture_before", "tracefmt::capture_after"}
)
TOP = 10
REL_TOL, ABS_TOL_US = 0.25, 20.0
LONG_OP_MS = 2.0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def op_name(name: str) -> str:
    """``aten::mm.default`` -> ``aten::mm`` (the profiler names ops without the overload)."""
    ns, sep, rest = name.partition("::")
    return f"{ns}{sep}{rest.split('.', 1)[0]}" if sep else name


class ProfiledOps(NamedTuple):
    """The profiler's view of the ops the recorder records, per op name (times in us)."""

    total_us: dict[str, float]
    self_us: dict[str, float]
    raw_self_us: dict[str, float]
    calls: Counter[str]
    max_us: dict[str, float]
    frames: int


def _inner(frame: Any) -> Any:
    """The op itself among a recorder frame's children: named like the frame's parent (the
    outer event); if the recorder ran ops of that name too, the longest."""
    parent = frame.cpu_parent
    same = [c for c in frame.cpu_children if parent is not None and c.name == parent.name]
    return max(same, key=lambda c: c.cpu_time_total) if same else None


def profiled_ops(events: Iterable[Any], recorded: Collection[str]) -> ProfiledOps:
    """The profiler's events of the ops the recorder records (names in ``recorded``), apart from
    the recorder's own work and from the ops' sub-ops."""
    events = list(events)
    inner = {id(e): _inner(e) for e in events if e.name in RECORDER_FRAMES}
    memo: dict[int, bool] = {}

    def outer(e: Any) -> bool:
        return any(c.name in RECORDER_FRAMES and inner[id(c)] is not None for c in e.cpu_children)

    def ours(e: Any) -> bool:
        """An event of the step, not of the recorder (an outer event counts as the recorder's:
        its inner event stands for the op)."""
        if id(e) not in memo:
            if e.name in RECORDER_FRAMES or outer(e):
                memo[id(e)] = False
            elif e.cpu_parent is None:
                memo[id(e)] = True
            elif e.cpu_parent.name in RECORDER_FRAMES:
                memo[id(e)] = inner[id(e.cpu_parent)] is e
            else:
                memo[id(e)] = ours(e.cpu_parent)
        return memo[id(e)]

    def op_call(e: Any) -> bool:
        """One of the step's ops as the recorder sees them: not inside another one."""
        if e.name not in recorded or not ours(e):
            return False
        up = e.cpu_parent
        while up is not None:
            if up.name in recorded and ours(up):
                return False
            up = up.cpu_parent
        return True

    out = ProfiledOps(defaultdict(float), defaultdict(float), defaultdict(float), Counter(), {}, 0)
    for e in events:
        out.raw_self_us[e.name] += e.self_cpu_time_total
        if op_call(e):
            out.total_us[e.name] += e.cpu_time_total
            out.self_us[e.name] += e.self_cpu_time_total
            out.calls[e.name] += 1
            out.max_us[e.name] = max(out.max_us.get(e.name, 0.0), e.cpu_time_total)
    return out._replace(frames=len(inner))


class RecordedOps(NamedTuple):
    """The trace's per-op host times, per op name (us), and the engine that recorded them."""

    total_us: dict[str, float]
    calls: Counter[str]
    longest: dict[str, tuple[float, int, int]]  # name -> (us, step, op index)
    engine: str


def recorded_ops(path: Path) -> RecordedOps:
    total: dict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()
    longest: dict[str, tuple[float, int, int]] = {}
    with tracefmt.open(path) as trace:
        engine = str(trace.provenance.extra.get("recorder_engine", "python"))
        for step in trace.iter_steps():
            for op in step.ops:
                if op.host_ns is None:
                    continue
                name, us = op_name(op.name), op.host_ns / 1000
                total[name] += us
                calls[name] += 1
                if us > longest.get(name, (-1.0, 0, 0))[0]:
                    longest[name] = (us, step.step, op.index)
    return RecordedOps(total, calls, longest, engine)


def run_profiled(
    name: str,
    path: Path,
    steps: int,
    warmup: int,
    *,
    engine: str,
    drain: bool,
    seed: int,
    profile: bool = True,
) -> tuple[RecordedOps, ProfiledOps | None]:
    """``steps`` steps of model ``name`` recorded (and profiled, with ``profile``) after ``warmup``."""
    model, _, train = build(name, seed=seed)
    for i in range(warmup):
        train(i)
    profiler = torch.profiler.profile() if profile else contextlib.nullcontext()
    with (
        profiler as prof,
        recorder.record(
            path,
            model=model,
            overwrite=True,
            capture=("graph", "stats"),
            schedule=lambda step: step < steps,
            engine=engine,
        ) as rec,
    ):
        for i in range(steps):
            loss = train(warmup + i)
            rec.step(loss=loss)
            if drain:
                rec.flush()
    rec = recorded_ops(path)
    return rec, None if prof is None else profiled_ops(prof.events(), rec.calls.keys())


def run_alone(
    name: str, steps: int, warmup: int, recorded: Collection[str], *, seed: int
) -> ProfiledOps:
    """The same ``steps`` steps of a freshly built, identically seeded model ``name``, profiled
    without the recorder: what the profiler measures when nothing else runs inside the ops."""
    model, _, train = build(name, seed=seed)
    del model
    for i in range(warmup):
        train(i)
    with torch.profiler.profile() as prof:
        for i in range(steps):
            train(warmup + i)
    return profiled_ops(prof.events(), recorded)


def compare_alone(rec: RecordedOps, alone: ProfiledOps) -> dict[str, Any]:
    """The :data:`TOP` op names by self CPU time of the profiler alone, recorded against it."""
    aten = {n: t for n, t in alone.self_us.items() if n.startswith("aten::")}
    rows = []
    for n in sorted(aten, key=aten.__getitem__, reverse=True)[:TOP]:
        recorded, profiled = rec.total_us.get(n, 0.0), aten[n]
        rows.append(
            {
                "op": n,
                "recorded_us": round(recorded, 1),
                "profiler_alone_us": round(profiled, 1),
                "rel_diff": round((recorded - profiled) / profiled, 3) if profiled else None,
                "within": _within(recorded, profiled),
                "calls": rec.calls.get(n, 0),
                "profiler_calls": alone.calls[n],
            }
        )
    return {"top10_alone": rows, "all_within_alone": all(r["within"] for r in rows)}


def _within(recorded: float, profiled: float) -> bool:
    return abs(recorded - profiled) <= max(REL_TOL * profiled, ABS_TOL_US)


def compare_gpt2(rec: RecordedOps, prof: ProfiledOps) -> dict[str, Any]:
    """The :data:`TOP` op names by the profiler's self CPU time, recorded against profiled."""
    aten = {n: t for n, t in prof.self_us.items() if n.startswith("aten::")}
    rows = []
    for n in sorted(aten, key=aten.__getitem__, reverse=True)[:TOP]:
        recorded, profiled, inclusive = rec.total_us.get(n, 0.0), aten[n], prof.total_us[n]
        rows.append(
            {
                "op": n,
                "recorded_us": round(recorded, 1),
                "profiler_us": round(profiled, 1),
                "rel_diff": round((recorded - profiled) / profiled, 3) if profiled else None,
                "within": _within(recorded, profiled),
                "profiler_incl_us": round(inclusive, 1),
                "within_incl": _within(recorded, inclusive),
                "profiler_raw_us": round(prof.raw_self_us[n], 1),
                "calls": rec.calls.get(n, 0),
                "profiler_calls": prof.calls[n],
            }
        )
    return {
        "top10": rows,
        "all_within": all(r["within"] for r in rows),
        "all_within_incl": all(r["within_incl"] for r in rows),
        "recorded_total_ms": round(sum(rec.total_us.values()) / 1000, 2),
        "profiler_incl_total_ms": round(sum(prof.total_us.values()) / 1000, 2),
        "recorded_ops": sum(rec.calls.values()),
        "profiler_ops": sum(prof.calls.values()),
        **long_ops(rec, prof),
    }


def long_ops(rec: RecordedOps, prof: ProfiledOps) -> dict[str, Any]:
    """The longest recorded op, and the op names whose longest recorded op took more than
    :data:`LONG_OP_MS` while the profiler's longest of that name took less."""
    limit_us = 1000 * LONG_OP_MS
    violations = []
    for n, (us, step, index) in sorted(rec.longest.items(), key=lambda kv: -kv[1][0]):
        profiled = prof.max_us.get(n, 0.0)
        if us > limit_us and profiled < limit_us:
            violations.append(
                {
                    "op": n,
                    "recorded_ms": round(us / 1000, 3),
                    "profiler_max_ms": round(profiled / 1000, 3),
                    "step": step,
                    "index": index,
                }
            )
    longest = max(rec.longest.items(), key=lambda kv: kv[1][0], default=("", (0.0, 0, 0)))
    prof_longest = max(prof.max_us.items(), key=lambda kv: kv[1], default=("", 0.0))
    return {
        "max_op_ms": round(longest[1][0] / 1000, 3),
        "max_op": longest[0],
        "profiler_max_op_ms": round(prof_longest[1] / 1000, 3),
        "profiler_max_op": prof_longest[0],
        "violations": violations,
        "recorder_frames": prof.frames,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="3 steps of each: a smoke run")
    p.add_argument("--steps", type=int, default=None, help="recorded GPT-2 steps (default 10)")
    p.add_argument("--demo-steps", type=int, default=None, help="recorded demo steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="unrecorded steps first")
    p.add_argument("--engine", choices=["auto", "native", "python"], default="auto")
    p.add_argument("--drain", action="store_true", help="flush the writer between steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    steps = args.steps or (3 if args.quick else 10)
    demo_steps = args.demo_steps or (3 if args.quick else 10)
    if min(steps, demo_steps) < 1 or args.warmup < 0:
        p.error("--steps and --demo-steps take at least 1, --warmup at least 0")
    transformers_version = require_transformers("profile_accuracy")
    torch.set_num_threads(1)
    out: dict[str, Any] = {"bench": "profile_accuracy"}
    engines = []
    with tempfile.TemporaryDirectory(prefix="recorder-bench-profile-") as d:
        for name, n in (("gpt2", steps), ("demo", demo_steps)):
            _log(f"{name}: {n} steps recorded and profiled, after {args.warmup} warm-up")
            rec, prof = run_profiled(
                name,
                Path(d) / name,
                n,
                args.warmup,
                engine=args.engine,
                drain=args.drain,
                seed=args.seed,
            )
            assert prof is not None
            out[name] = (compare_gpt2 if name == "gpt2" else long_ops)(rec, prof)
            if name == "gpt2":
                _log(f"{name}: the same {n} steps recorded alone, then profiled alone")
                rec_alone, _ = run_profiled(
                    name,
                    Path(d) / f"{name}-alone",
                    n,
                    args.warmup,
                    engine=args.engine,
                    drain=args.drain,
                    seed=args.seed,
                    profile=False,
                )
                alone = run_alone(name, n, args.warmup, rec_alone.calls.keys(), seed=args.seed)
                out[name].update(compare_alone(rec_alone, alone))
            out[name]["steps"] = n
            engines.append(rec.engine)
    out["native"] = all(e == "native" for e in engines)
    out["engine"] = args.engine
    out["engines_used"] = sorted(set(engines))
    out["drain"] = args.drain
    out.update(
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers_version,
        python=platform.python_version(),
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
