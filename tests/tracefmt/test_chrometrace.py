"""``tracefmt export-trace``: a step as Chrome Trace Event Format (issue 14).

Each output is checked as a trace viewer reads it: every event has its required fields, the
complete (``X``) slices of a thread nest (any two are disjoint or one holds the other, in integer
nanoseconds, as Perfetto rounds them), each op's slice lasts exactly its recorded host time and
sits inside the slices of its phase and module path, and a split export holds every op once.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from tests.synth import mlp_graph, synthetic_step
from tests.tracefmt.multirank import write_run
from tracefmt import Event, TraceWriter
from tracefmt.chrometrace import trace_events
from tracefmt.cli import TraceErrorGroup
from tracefmt.cli_trace import export_trace_cmd
from tracefmt.reader import Step
from tracefmt.traceexport import export_trace, part_path

Doc = dict[str, Any]
_REQUIRED = {"X": ("name", "ph", "ts", "dur", "pid", "tid"), "C": ("name", "ph", "ts", "pid", "args")}


def _ns(us: float) -> int:
    return round(us * 1000)


def _events(doc: Doc, ph: str, cat: str | None = None) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e["ph"] == ph and (cat is None or e.get("cat") == cat)]


def _check_structure(doc: Doc) -> None:
    assert isinstance(doc["traceEvents"], list)
    for e in doc["traceEvents"]:
        assert {"name", "ph", "pid"} <= set(e), e
        for key in _REQUIRED.get(e["ph"], ()):
            assert key in e, (key, e)
        if e["ph"] == "X":
            assert min(e["dur"], e["ts"]) >= 0, e
        elif e["ph"] == "C":
            assert all(isinstance(v, int) for v in e["args"].values()), e
        elif e["ph"] == "M":
            assert e["name"] in {"process_name", "process_sort_index", "thread_name"}, e
        else:
            assert e["ph"] == "i", e
            assert {"ts", "tid", "s"} <= set(e), e


def _check_nesting(doc: Doc) -> None:
    """Per thread, any two X slices are disjoint or one contains the other."""
    tracks: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for e in _events(doc, "X"):
        start = _ns(e["ts"])
        tracks[e["pid"], e["tid"]].append((start, start + _ns(e["dur"])))
    for spans in tracks.values():
        for (a0, a1), (b0, b1) in itertools.combinations(spans, 2):
            disjoint = a1 <= b0 or b1 <= a0
            assert disjoint or (a0 <= b0 and b1 <= a1) or (b0 <= a0 and a1 <= b1), ((a0, a1), (b0, b1))


def _check_parents(doc: Doc) -> None:
    """Each op slice lies inside its phase's slice and one slice per level of its module path."""
    outer = {
        (e["pid"], e["cat"], e["name"], _ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"]))
        for e in _events(doc, "X")
        if e["cat"] != "op"
    }
    for op in _events(doc, "X", "op"):
        start = _ns(op["ts"])
        end = start + _ns(op["dur"])
        parts = op["args"]["module"].split(".") if op["args"]["module"] else []
        wanted = [("phase", op["args"]["phase"])]
        wanted += [("module", ".".join(parts[: i + 1])) for i in range(len(parts))]
        for cat, name in wanted:
            assert any(
                p == op["pid"] and c == cat and n == name and s <= start and end <= t
                for p, c, n, s, t in outer
            ), (cat, name, op)


def _check(doc: Doc, steps: list[Step]) -> None:
    """Every check, and the op slices against the Python reader's ops of ``steps``."""
    _check_structure(doc)
    _check_nesting(doc)
    _check_parents(doc)
    for step in steps:
        ops = [e for e in _events(doc, "X", "op") if e["pid"] == step.rank + 1]
        assert sorted(e["args"]["op"] for e in ops) == list(range(len(step.ops)))
        assert sum(_ns(e["dur"]) for e in ops) == sum(op.host_ns or 0 for op in step.ops)
        for e in ops:
            node = step.ops[e["args"]["op"]]
            assert (e["name"], _ns(e["dur"]), e["args"]["module"]) == (
                node.name,
                node.host_ns or 0,
                node.module,
            )


@pytest.fixture(scope="module", params=["python", "native"])
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps of a small nested model, recorded by each engine."""
    torch = pytest.importorskip("torch")
    import recorder
    from recorder.engine import extension

    if request.param == "native" and extension.load().module is None:
        pytest.skip(f"the native engine cannot be built here: {extension.load().reason}")
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), block, torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(3, 4)
    path = tmp_path_factory.mktemp(request.param) / "run"
    with recorder.record(path, model=model, engine=request.param) as rec:
        for _ in range(2):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    return path


def test_a_recorded_step_is_a_valid_nested_trace(recorded: Path, tmp_path: Path) -> None:
    with tracefmt.open(recorded) as trace:
        result = export_trace(trace, 1, tmp_path / "step.json")
        step = trace.step(1)
    assert result.files == (tmp_path / "step.json",)
    assert (result.unmeasured_starts, result.moved_starts, result.ranks) == (0, 0, (0,))
    doc = json.loads(result.files[0].read_text())
    _check(doc, [step])
    for e in _events(doc, "X", "op"):  # placed where the recorder saw each op start
        assert _ns(e["ts"]) == step.ops[e["args"]["op"]].host_start_ns
    names = {(e["cat"], e["name"]) for e in _events(doc, "X") if e["cat"] != "op"}
    assert {("phase", "forward"), ("phase", "backward"), ("phase", "optimizer")} <= names
    assert {("module", "1"), ("module", "1.0"), ("module", "1.1")} <= names  # nested by depth
    memory = _events(doc, "C")
    assert max(memory, key=lambda e: e["ts"])["args"]["cumulative"] == sum(
        op.mem_bytes or 0 for op in step.ops
    )
    mm = next(e for e in _events(doc, "X", "op") if e["name"] == "aten::addmm.default")
    assert mm["args"]["inputs"] == "f32[8], f32[3,4], f32[4,8]"
    assert mm["args"]["outputs"] == "f32[3,8]"
    assert {"norm", "max", "nan"} <= set(mm["args"]["output_stats"][0])
    names_meta = {e["args"]["name"] for e in _events(doc, "M") if e["name"] == "process_name"}
    assert names_meta == {"rank 0"}


def test_a_large_step_splits_into_files_that_each_open_alone(recorded: Path, tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    cap = 6_000
    with tracefmt.open(recorded) as trace:
        result = export_trace(trace, 1, out, max_bytes=cap)
        step = trace.step(1)
    n = len(result.files)
    assert n >= 3
    assert result.files == (out, *(tmp_path / f"step.{i}.json" for i in range(1, n)))
    seen: list[int] = []
    for i, path in enumerate(result.files):
        doc = json.loads(path.read_text())
        _check_structure(doc)
        _check_nesting(doc)
        _check_parents(doc)  # the phase and module slices around its ops come with them
        ops = _events(doc, "X", "op")
        assert path.stat().st_size <= cap or len(ops) == 1
        assert (doc["otherData"]["part"], doc["otherData"]["parts"]) == (i + 1, n)
        assert {e["args"]["name"] for e in _events(doc, "M") if e["name"] == "process_name"} == {
            "rank 0"
        }
        seen += [e["args"]["op"] for e in ops]
    assert seen == list(range(len(step.ops)))  # every op once, in order
    # the CLI says so, and a later export into fewer files names the ones it left behind
    cli = CliRunner().invoke(_group(), ["export-trace", str(recorded), "--step", "1", "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    assert f"{out} (" in cli.output
    assert "1 file:" in cli.output
    assert f"{tmp_path / 'step.1.json'} is left from an earlier export" in cli.output


def _group() -> click.Group:
    """The command as the ``tracefmt`` group runs it (TraceError -> one line, exit 2)."""
    group = TraceErrorGroup()
    group.add_command(export_trace_cmd)
    return group


def test_two_ranks_are_two_processes_laid_end_to_end_without_starts(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", world=2, steps=2)
    out = tmp_path / "both.json"
    result = CliRunner().invoke(_group(), ["export-trace", str(run), "--step", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "ranks 0, 1" in result.output
    assert "no recorded start time" in result.output
    doc = json.loads(out.read_text())
    with tracefmt.open(run) as trace:
        steps = [trace.step(1, r) for r in (0, 1)]
    _check(doc, steps)
    processes = {e["pid"]: e["args"]["name"] for e in _events(doc, "M") if e["name"] == "process_name"}
    assert processes == {1: "rank 0", 2: "rank 1"}
    assert doc["otherData"]["ops_without_start"] == sum(len(s.ops) for s in steps)
    for pid in (1, 2):  # end to end: each op starts where the one before it ended
        ops = sorted(
            (e for e in _events(doc, "X", "op") if e["pid"] == pid), key=lambda e: e["args"]["op"]
        )
        for a, b in itertools.pairwise(ops):
            assert _ns(b["ts"]) == _ns(a["ts"]) + _ns(a["dur"])
    one = tmp_path / "one.json"
    result = CliRunner().invoke(
        _group(), ["export-trace", str(run), "--step", "1", "--rank", "1", "-o", str(one)]
    )
    assert result.exit_code == 0, result.output
    assert {e["pid"] for e in json.loads(one.read_text())["traceEvents"]} == {2}


def _mixed_trace(path: Path) -> Path:
    """A step whose op 2 has no recorded start and op 4 starts before op 3 ends, with an event
    at op 1 and one of no op."""
    graph = mlp_graph()
    record = synthetic_step(0, graph, np.random.default_rng(0), with_values=False)
    assert record.op_starts is not None
    assert record.op_stats is not None
    starts = [int(s) for s in record.op_starts]
    starts[2] = -1
    starts[4] = starts[3] + 1
    record.op_starts = starts
    record.events = [Event("note", "no op"), Event("nonfinite_created", "NaN here", op=1, tensor=3)]
    with TraceWriter(path, fsync=False) as w:
        w.write_step(record)
    return path


def test_ops_without_or_with_overlapping_starts_are_moved_so_slices_nest(tmp_path: Path) -> None:
    path = _mixed_trace(tmp_path / "mixed.tft.h5")
    with tracefmt.open(path) as trace:
        result = export_trace(trace, 0, tmp_path / "m.json")
        step = trace.step(0)
    assert (result.unmeasured_starts, result.moved_starts) == (1, 1)
    doc = json.loads(result.files[0].read_text())
    _check(doc, [step])
    ops = {e["args"]["op"]: e for e in _events(doc, "X", "op")}
    for i in (2, 4):
        assert _ns(ops[i]["ts"]) == _ns(ops[i - 1]["ts"]) + _ns(ops[i - 1]["dur"])
    assert "start" in ops[2]["args"]
    assert "start" not in ops[3]["args"]
    instants = {e["name"]: e for e in _events(doc, "i")}
    assert instants["nonfinite_created"]["ts"] == ops[1]["ts"]
    assert instants["nonfinite_created"]["args"]["tensor"] == 3
    assert _ns(instants["note"]["ts"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "9"], "Step 9 is in no rank of"),
        (["--step", "0", "--rank", "3"], "Rank 3 is not in"),
        (["--step", "0", "--rank", "x"], "'x' is neither a rank number nor 'all'"),
        (["--step", "0", "--max-mb", "0"], "the size cap must be more than 0 MB"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    path = _mixed_trace(tmp_path / "mixed.tft.h5")
    result = CliRunner().invoke(
        _group(), ["export-trace", str(path), *args, "-o", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.json").exists()


def test_json_output_names_the_files(tmp_path: Path) -> None:
    path = _mixed_trace(tmp_path / "mixed.tft.h5")
    out = tmp_path / "m.json"
    result = CliRunner().invoke(
        _group(), ["export-trace", str(path), "--step", "0", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["files"] == [str(out)]
    assert data["ranks"] == [0]
    assert data["unmeasured_starts"] == 1


def _walk(doc: Doc) -> Iterator[Any]:
    stack: list[Any] = [doc]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())


def test_non_finite_statistics_stay_strict_json(tmp_path: Path) -> None:
    """A NaN or Inf statistic is written as a string: strict parsers (Perfetto's) refuse NaN."""
    graph = mlp_graph()
    record = synthetic_step(0, graph, np.random.default_rng(1), with_values=False)
    assert record.stats is not None
    record.stats["max"][2] = np.inf
    record.stats["min"][2] = np.nan
    with TraceWriter(tmp_path / "t.tft.h5", fsync=False) as w:
        w.write_step(record)
    with tracefmt.open(tmp_path / "t.tft.h5") as trace:
        result = export_trace(trace, 0, tmp_path / "t.json")
    text = result.files[0].read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert any(v == "inf" for v in _walk(doc))


def test_the_in_memory_document_has_the_events_of_the_file(tmp_path: Path) -> None:
    path = _mixed_trace(tmp_path / "mixed.tft.h5")
    with tracefmt.open(path) as trace:
        result = export_trace(trace, 0, tmp_path / "m.json")
        doc = trace_events([trace.step(0)])
    on_disk = json.loads(result.files[0].read_text())["traceEvents"]
    assert sorted(map(json.dumps, doc["traceEvents"])) == sorted(map(json.dumps, on_disk))
    assert part_path(Path("a/step.json"), 2) == Path("a/step.2.json")
    assert part_path(Path("a/trace"), 1) == Path("a/trace.1")
