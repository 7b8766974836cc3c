"""The tracefmt CLI, driven through click's CliRunner: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from tracefmt.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_info_table_and_json(small_trace: Path) -> None:
    code, out, _ = run("info", str(small_trace))
    assert code == 0
    assert "Bytes by kind" in out
    assert "values" in out
    code, out, _ = run("info", str(small_trace), "--json")
    data = json.loads(out)
    assert code == 0
    assert data["rank_info"][0]["steps"] == 5
    assert data["format_version"] == "1.6"  # the file's version, as the writer wrote it
    assert data["provenance"]["h5py"]
    assert {k["kind"] for k in data["rank_info"][0]["bytes_by_kind"]} >= {"graph", "stats", "values"}


def test_ls_lists_every_step(small_trace: Path) -> None:
    code, out, _ = run("ls", str(small_trace), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["num_values"] == rows[0]["num_tensors"] for r in rows)
    code, out, _ = run("ls", str(small_trace))
    assert code == 0
    assert "step" in out


def test_ls_and_info_show_light_steps_and_what_counts(tmp_path: Path) -> None:
    """Format 1.4: light steps are listed with their kind, the step flags that count (created,
    state) and their events' kinds; ``info`` counts light steps and flagged step numbers."""
    from tests.badfiles import write_flight

    path = write_flight(tmp_path / "f.tft.h5")
    code, out, _ = run("ls", str(path))
    assert code == 0
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    got = [(c[0].strip(), c[2].strip(), c[6].strip(), c[7].strip()) for c in rows]
    assert got == [
        ("0", "light", "", "0"),
        ("1", "full", "created state", "1: nonfinite_created"),
        ("1", "light", "created", "1: nonfinite_created"),
        ("2", "full", "", "0"),  # the mask's -inf: by design
        ("2", "light", "state", "1: nonfinite_state"),
        ("3", "light", "", "0"),
    ]
    code, out, _ = run("ls", str(path), "--json")
    data = json.loads(out)
    assert [(r["step"], r["kind"]) for r in data][:3] == [(0, "light"), (1, "full"), (1, "light")]
    assert data[3]["has_inf"] is True  # the raw flags stay in --json
    assert data[3]["nonfinite_created"] is False
    assert data[4]["num_rows"] == 4
    assert data[2]["event_kinds"] == ["nonfinite_created"]
    code, out, _ = run("info", str(path), "--json")
    info = json.loads(out)["rank_info"][0]
    assert (info["steps"], info["light_steps"]) == (2, 4)
    assert (info["steps_nonfinite_created"], info["steps_nonfinite_state"]) == (1, 2)
    assert (info["steps_with_nan"], info["steps_with_inf"]) == (1, 2)
    code, out, _ = run("info", str(path))
    assert code == 0
    assert "light" in out
    assert "created" in out


def test_ls_elides_long_runs(tmp_path: Path) -> None:
    from tests.synth import write_synthetic

    path = tmp_path / "long.tft.h5"
    write_synthetic(path, steps=60, fsync=False)
    code, out, _ = run("ls", str(path))
    assert code == 0
    assert "20 more" in out
    assert "--all" in out
    code, out, _ = run("ls", str(path), "--all")
    assert "more" not in out


def test_show_filters_and_sorts(small_trace: Path) -> None:
    code, out, _ = run("show", str(small_trace), "--step", "2", "--json", "--phase", "forward")
    data = json.loads(out)
    assert code == 0
    assert data["ops"]
    assert {op["phase"] for op in data["ops"]} == {"forward"}
    code, out, _ = run("show", str(small_trace), "--step", "2", "--json", "--module", "layers.1*")
    assert {op["module"] for op in json.loads(out)["ops"]} == {"layers.1", "layers.1.act"}
    code, out, _ = run("show", str(small_trace), "--step", "2", "--json", "--op", "relu*")
    assert {op["name"] for op in json.loads(out)["ops"]} == {"aten::relu.default"}
    code, out, _ = run("show", str(small_trace), "--step", "2", "--json", "--sort", "time")
    times = [op["host_ns"] for op in json.loads(out)["ops"]]
    assert times == sorted(times, reverse=True)
    code, out, _ = run("show", str(small_trace), "--step", "2")
    assert code == 0
    assert "mm.default" in out
    assert "layers.0" in out


def test_dump_writes_npy_without_pickle(small_trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.npy"
    code, text, _ = run(
        "dump", str(small_trace), "--step", "1", "--tensor", "layers.0.weight", "-o", str(out)
    )
    assert code == 0, text
    got = np.load(out, allow_pickle=False)
    with tracefmt.open(small_trace) as trace:
        named = [t for t in trace.step(1).tensors if t.name == "layers.0.weight"]
        want = named[-1].values().astype(np.float32)  # a name means its last version in the step
    np.testing.assert_array_equal(got, want)
    code, _, _ = run("dump", str(small_trace), "--step", "1", "--tensor", "1", "--raw", "-o", str(out))
    assert code == 0
    assert np.load(out).dtype == np.uint16


@pytest.mark.parametrize(
    "args",
    [
        ("show", "{p}", "--step", "999"),
        ("dump", "{p}", "--step", "1", "--tensor", "nope", "-o", "x.npy"),
        ("show", "{p}", "--step", "1", "--rank", "3"),
    ],
)
def test_trace_errors_are_one_line(small_trace: Path, args: tuple[str, ...]) -> None:
    code, out, err = run(*(a.format(p=small_trace) for a in args))
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in out + err


def test_not_a_trace(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tft.h5"
    bogus.write_bytes(b"not hdf5 at all")
    code, _, err = run("info", str(bogus))
    assert code == 2
    assert "not a readable HDF5 file" in err


def test_validate_exit_codes(small_trace: Path, tmp_path: Path) -> None:
    code, out, _ = run("validate", str(small_trace), "--deep")
    assert code == 0
    assert "valid" in out
    import h5py

    with h5py.File(small_trace, "r+") as f:
        row = f["steps"][1]
        row["step"] = 0  # steps no longer strictly increasing
        f["steps"][1] = row
    code, out, _ = run("validate", str(small_trace), "--json")
    assert code == 1
    assert any(f["rule"].startswith("TF-STEP") for f in json.loads(out))
    bogus = tmp_path / "bogus.tft.h5"
    bogus.write_bytes(b"not hdf5")
    code, _, _ = run("validate", str(bogus))
    assert code == 2


def test_dump_keeps_a_0d_tensor_0d(small_trace: Path, tmp_path: Path) -> None:
    # Spec section 5.5: a 0-d tensor has no dims; dump wrote it as shape (1,).
    with tracefmt.open(small_trace) as trace:
        scalar = next(t for t in trace.step(1).tensors if t.shape == () and t.has_values)
        want = scalar.values()
    out = tmp_path / "loss.npy"
    code, text, _ = run(
        "dump", str(small_trace), "--step", "1", "--tensor", str(scalar.index), "-o", str(out)
    )
    assert code == 0, text
    got = np.load(out, allow_pickle=False)
    assert got.shape == ()
    assert got == want


def _strict(text: str) -> object:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (RFC 8259)."""

    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture
def nonfinite_trace(tmp_path: Path) -> Path:
    """One step with non-finite numbers everywhere JSON output shows them: an op attribute of
    -inf and NaN, a tensor holding -inf and NaN, NaN and inf scalars, and no duration (NaN)."""
    from tracefmt import DType, GraphBuilder, Phase, StepRecord, TraceWriter
    from tracefmt.records import empty_stats
    from tracefmt.stats import tensor_stats

    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (4,), name="scores")
    y = g.add_tensor(DType.FLOAT32, (4,), producer=0)
    g.add_op(
        "aten::masked_fill.Scalar",
        phase=Phase.FORWARD,
        module="attn",
        inputs=[x],
        outputs=[y],
        attrs={"value": float("-inf"), "other": float("nan")},
    )
    graph = g.finish()
    xv = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    yv = np.array([-np.inf, np.nan, -np.inf, np.nan], dtype=np.float32)
    stats = empty_stats(graph.num_tensors)
    stats[x], stats[y] = tensor_stats(xv, DType.FLOAT32), tensor_stats(yv, DType.FLOAT32)
    path = tmp_path / "nonfinite.tft.h5"
    with TraceWriter(path) as w:
        w.write_step(
            StepRecord(
                step=0,
                graph=graph,
                stats=stats,
                values={x: xv, y: yv},
                scalars={"loss": float("nan"), "scale": float("inf")},
            )
        )
        w.flush()
    return path


def test_json_output_is_strict_json(nonfinite_trace: Path) -> None:
    # Python's json writes NaN / Infinity / -Infinity, which jq, JavaScript and Go refuse.
    p = str(nonfinite_trace)
    outputs = {}
    for command in (("info", p), ("ls", p), ("show", p, "--step", "0"), ("validate", p)):
        code, out, err = run(*command, "--json")
        assert code == 0, err
        outputs[command[0]] = _strict(out)
    (row,) = outputs["ls"]  # type: ignore[misc]
    assert row["duration"] == "nan"
    shown = outputs["show"]
    assert isinstance(shown, dict)
    assert shown["scalars"] == {"loss": "nan", "scale": "inf"}
    (op,) = shown["ops"]
    assert op["attrs"] == {"value": "-inf", "other": "nan"}
    (stats,) = op["outputs_stats"]
    assert (stats["nan"], stats["inf"]) == (2, 2)
