"""Diff building blocks on synthetic traces (no torch): side specs, alignment, distances, origin,
reports and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from replayer.cli import main
from replayer.diff.align import align_ops
from replayer.diff.core import attrs_differ, diff_steps, divergent_ops
from replayer.diff.jsondata import to_json
from replayer.diff.numeric import tolerance_for, values_distance
from replayer.diff.page import plot_png
from replayer.diff.render import render
from replayer.diff.results import RunDiff, StepDiff
from replayer.diff.runs import Side, diff_runs, diff_sides, parse_side
from replayer.errors import ReplayError
from tests.replayer.diff.diff_synth import write_chain
from tracefmt import DType
from tracefmt.model import OpNode, Phase


@pytest.mark.parametrize(
    ("text", "side"),
    [
        ("runs/a", Side("runs/a")),
        ("runs/a:3", Side("runs/a", 3)),
        ("runs/a:3@1", Side("runs/a", 3, 1)),
        ("runs/a@2", Side("runs/a", None, 2)),
        ("C:/x/y.tft.h5:12", Side("C:/x/y.tft.h5", 12)),
        ("me@host/run", Side("me@host/run")),
    ],
)
def test_parse_side(text: str, side: Side) -> None:
    assert parse_side(text) == side
    assert str(parse_side(str(side))) == str(side)


def test_parse_side_prefers_an_existing_path(tmp_path: Path) -> None:
    odd = tmp_path / "run:3"
    odd.mkdir()
    assert parse_side(str(odd)) == Side(str(odd))
    with pytest.raises(ReplayError, match="TRACE"):
        parse_side("  ")


def _op(i: int, name: str, module: str, phase: Phase = Phase.FORWARD) -> OpNode:
    return OpNode(index=i, name=name, phase=phase, module=module, inputs=(), outputs=())


def test_align_identity_insert_and_reorder() -> None:
    a = [_op(0, "aten::mm", "l0"), _op(1, "aten::relu", "l0"), _op(2, "aten::mm", "l1")]
    al = align_ops(a, a)
    assert al.identity
    assert al.a == al.b == (0, 1, 2)
    b = [a[0], a[1], _op(2, "aten::mm", "new"), _op(3, "aten::mm", "l1")]
    al = align_ops(a, b)
    assert list(zip(al.a, al.b, strict=True)) == [(0, 0), (1, 1), (-1, 2), (2, 3)]
    assert al.matched == 3
    swapped = [a[0], a[2], a[1]]
    al = align_ops(a, swapped)
    assert al.matched == 3
    assert len(al.moved) == 1
    renamed = [_op(0, "aten::mm", "layer0"), _op(1, "aten::relu", "layer0"), _op(2, "aten::mm", "l1")]
    al = align_ops(a, renamed)
    assert al.matched == 3
    assert len(al.renamed) == 2


def test_align_large_identical_is_the_identity() -> None:
    ops = [_op(i, f"aten::op{i % 7}", f"m.{i // 10}") for i in range(20_000)]
    al = align_ops(ops, list(ops))
    assert al.identity
    assert len(al) == 20_000


def test_attrs_ignore_object_addresses() -> None:
    a = {"generator": "<torch._C.Generator object at 0x7f31fb07b410>", "p": 0.5}
    b = {"generator": "<torch._C.Generator object at 0x7f00aa000000>", "p": 0.5}
    assert attrs_differ(a, b) == []
    assert attrs_differ(a, {**b, "p": 0.25}) == ["p"]


def test_tolerances_by_dtype() -> None:
    assert tolerance_for(DType.FLOAT32, DType.FLOAT32).rtol == 1.3e-6
    assert tolerance_for(DType.FLOAT32, DType.BFLOAT16).rtol == 1.6e-2
    assert tolerance_for(DType.INT64, DType.INT64).atol == 0
    assert tolerance_for(DType.FLOAT32, DType.FLOAT32, rtol=0.5).rtol == 0.5


def test_values_distance_ulp_count_and_nan() -> None:
    a = np.array([1.0, -2.0, 3.0, np.nan], dtype=np.float32)
    b = a.copy()
    b[1] = np.nextafter(b[1], np.float32(-np.inf))
    b[2] = np.nextafter(np.nextafter(b[2], np.float32(0)), np.float32(0))
    tol = tolerance_for(DType.FLOAT32, DType.FLOAT32)
    dist, within = values_distance(a, b, DType.FLOAT32, DType.FLOAT32, tol)
    assert dist.ulp == 2
    assert dist.count == 2
    assert dist.numel == 4
    assert within
    assert not dist.nonfinite
    c = b.copy()
    c[0] = np.nan
    dist, within = values_distance(a, c, DType.FLOAT32, DType.FLOAT32, tol)
    assert dist.nonfinite
    assert not within
    assert dist.max_abs == np.inf
    x = np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16)
    y = np.array([1.0, 2.015625], dtype=ml_dtypes.bfloat16)  # one bf16 ULP above 2
    dist, within = values_distance(
        x, y, DType.BFLOAT16, DType.BFLOAT16, tolerance_for(DType.BFLOAT16, DType.BFLOAT16)
    )
    assert dist.ulp == 1
    assert dist.count == 1
    assert within
    f32 = np.array([1.0, 2.0], dtype=np.float32)
    dist, _ = values_distance(f32, x, DType.FLOAT32, DType.BFLOAT16, tol)
    assert dist.ulp is None
    assert dist.count == 0


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chains")
    return {
        "a": write_chain(root / "a.tft.h5", 40, steps=3),
        "same": write_chain(root / "same.tft.h5", 40, steps=3),
        "noise": write_chain(root / "noise.tft.h5", 40, steps=3, noise_at=17, noise_step=1),
        "a_values": write_chain(root / "av.tft.h5", 40, values=True),
        "noise_values": write_chain(root / "nv.tft.h5", 40, values=True, noise_at=17),
        "insert": write_chain(root / "ins.tft.h5", 40, insert_at=10),
    }


def test_chain_origin_stats_only(chains: dict[str, Path]) -> None:
    with tracefmt.open(chains["a"]) as ta, tracefmt.open(chains["noise"]) as tb:
        result = diff_runs(ta, tb)
    assert result.first_divergent == 1
    assert result.first_different == 1
    d = result.diff
    assert d is not None
    assert d.origin is not None
    assert d.origin.kind == "op"
    assert d.origin.a is not None
    assert d.origin.a.index == 17
    assert d.origin.a.module == "layers.8"
    assert d.origin.a.occurrence == 1
    assert next(x.a.index for x in d.divergences) == 17
    assert d.chain[0].index == 17
    assert d.chain[-1].index == 40
    assert d.chain_diverged
    assert divergent_ops(d, "b") == set(range(17, 41))
    assert divergent_ops(result, "a") == set(range(17, 41))


def test_chain_origin_with_values(chains: dict[str, Path]) -> None:
    with tracefmt.open(chains["a_values"]) as ta, tracefmt.open(chains["noise_values"]) as tb:
        d = diff_steps(ta.step(0), tb.step(0))
        quick = diff_steps(ta.step(0), tb.step(0), values=False)
    assert d.origin is not None
    assert d.origin.tensor is not None
    dist = d.origin.tensor.distance
    assert dist is not None
    assert dist.source == "values"
    assert dist.count == 16
    assert quick.origin is not None
    assert quick.origin.tensor is not None
    assert quick.origin.tensor.distance is not None
    assert quick.origin.tensor.distance.source == "stats"
    assert quick.origin.position == d.origin.position


def test_chain_insert_is_structural(chains: dict[str, Path]) -> None:
    with tracefmt.open(chains["a"]) as ta, tracefmt.open(chains["insert"]) as tb:
        d = diff_steps(ta.step(0), tb.step(0))
    assert [c.kind for c in d.structural] == ["added"]
    assert d.modules_added == ("inserted",)
    assert d.matched == d.ops_a == d.ops_b - 1
    assert d.origin is not None
    assert d.origin.kind == "structural"
    assert d.origin.b is not None
    assert d.origin.b.module == "inserted"


def test_identical_chain_and_missing_steps(chains: dict[str, Path]) -> None:
    result = diff_sides(str(chains["a"]), str(chains["same"]))
    assert isinstance(result, RunDiff)
    assert result.identical
    with pytest.raises(tracefmt.TraceError, match="Step 7"):
        diff_sides(f"{chains['a']}:7", str(chains["same"]))
    with pytest.raises(ReplayError, match="rtol"):
        diff_sides(f"{chains['a']}:0", str(chains["same"]), rtol=-1.0)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["diff", *args])
    return result.exit_code, result.output


def test_cli_exit_codes(chains: dict[str, Path], tmp_path: Path) -> None:
    assert _cli(str(chains["a"]), str(chains["same"]))[0] == 0
    code, out = _cli(str(chains["a"]), str(chains["noise"]))
    assert code == 1
    assert "layers.8" in out
    assert _cli(str(tmp_path / "missing"), str(chains["a"]))[0] == 2
    assert _cli(f"{chains['a']}:99", str(chains["a"]))[0] == 2
    assert _cli(f"{chains['a']}@5", str(chains["a"]))[0] == 2
    assert _cli(str(chains["a"]), str(chains["a"]), "--atol", "-1")[0] == 2
    assert _cli(str(chains["a"]))[0] == 2
    code, out = _cli(
        f"{chains['a']}:1", str(chains["noise"]), "--json", "--report", str(tmp_path / "r.html")
    )
    data = json.loads(out)
    assert code == 1
    assert data["kind"] == "step"
    assert data["origin"]["kind"] == "op"
    assert data["top_divergences"]
    assert data["verdict"] == "different"
    assert "data:image/png;base64," in (tmp_path / "r.html").read_text()


def test_report_renders_and_plots(chains: dict[str, Path]) -> None:
    from rich.console import Console

    result = diff_sides(f"{chains['a']}:0", str(chains["insert"]))
    assert isinstance(result, StepDiff)
    console = Console(record=True, width=120)
    render(result, console)
    text = console.export_text()
    assert "modules only in B: inserted" in text
    assert "Origin" in text
    png = plot_png(result)
    assert png is not None
    assert png.startswith(b"\x89PNG")
    json.dumps(to_json(result), allow_nan=False)


def test_diff_modules_import_without_torch(chains: dict[str, Path]) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import replayer.diff.core, replayer.diff.runs, replayer.diff.page, replayer.cli_diff\n"
        f"r = replayer.diff.runs.diff_sides({str(chains['a'])!r}, {str(chains['noise'])!r})\n"
        "assert r.diff.origin.a.index == 17\n"
        "assert not any(k == 'torch' or k.startswith('torch.') for k, v in sys.modules.items()"
        " if v is not None)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_two_ranks_of_one_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for rank in (0, 1):
        write_chain(
            tracefmt.rank_file_path(run, rank),
            30,
            steps=2,
            rank=rank,
            world_size=2,
            run_id="ranks",
            noise_at=12 if rank else None,
            noise_step=1,
        )
    result = diff_sides(f"{run}@0", f"{run}@1")
    assert isinstance(result, RunDiff)
    assert (result.rank_a, result.rank_b) == (0, 1)
    assert result.first_divergent == 1
    assert result.diff is not None
    assert result.diff.origin is not None
    assert result.diff.origin.a is not None
    assert result.diff.origin.a.index == 12
    step = diff_sides(f"{run}:1@0", f"{run}:1@1")
    assert isinstance(step, StepDiff)
    assert (step.rank_a, step.rank_b) == (0, 1)
    assert not step.equal
    assert _cli(f"{run}:0@0", f"{run}@1")[0] == 0


def test_steps_recorded_by_one_side_only_are_a_difference(
    chains: dict[str, Path], tmp_path: Path
) -> None:
    short = write_chain(tmp_path / "short.tft.h5", 40, steps=2)
    result = diff_sides(str(chains["a"]), str(short))
    assert isinstance(result, RunDiff)
    assert result.only_a == (2,)
    assert result.first_divergent is None
    assert not result.equal
    code, out = _cli(str(chains["a"]), str(short))
    assert code == 1
    assert "one side only" in out
