"""Model Explorer overlays that mark: a diff's relative difference per op with its origin, the
path of a NaN to the loss; and the cache of conversions.  No browser (JSON and CLI level)."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from click.testing import CliRunner

import replayer.view.cache
import tracefmt
from replayer.cli import main
from replayer.view import cli as view_cli
from replayer.view.cache import cache_dir, cached_export
from replayer.view.divergence import explorer_diff, origin_op, step_diff
from replayer.view.explorer import export_step
from replayer.view.nanpath import ORIGIN, nan_path
from replayer.view.netron import prepare_diff
from replayer.view.overlays import HIGH
from replayer.view.webapp import missing, page_url
from tests.replayer.diff.diff_synth import write_chain
from tests.replayer.view._big import write_training_step
from tests.replayer.why.why_synth import Tape, mlp_step, writer

N_OPS = 8
NOISE_AT = 4


def _results(text: str) -> dict[str, dict[str, Any]]:
    data = json.loads(text)
    return {n: r for g in data.values() for n, r in g["results"].items()}


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_chain(tmp_path / "a", N_OPS, values=True)
    b = write_chain(tmp_path / "b", N_OPS, values=True, noise_at=NOISE_AT)
    return a, b


def test_divergence_overlay_values_each_diverged_op_and_marks_the_origin(
    runs: tuple[Path, Path],
) -> None:
    a, b = runs
    view = prepare_diff(str(a), str(b))
    d = step_diff(view.result)
    assert d is not None
    assert origin_op(d) == NOISE_AT
    graph = explorer_diff(view)
    first = graph.overlays[0]
    assert first.key == "divergence"
    results = _results(first.text)
    diverged = {f"op{k}" for k in view.notes}
    assert set(results) == diverged  # one graph: no part nodes
    assert results[f"op{NOISE_AT}"]["bgColor"] == ORIGIN
    assert all(r["value"] > 0 for n, r in results.items() if n != f"op{NOISE_AT}")
    assert graph.focus == f"op{NOISE_AT}"
    url = page_url(8080, graph, focus=graph.focus)
    assert "selectedNodeId" in unquote(url)
    # the recorded overlays follow
    assert {o.key for o in graph.overlays[1:]} >= {"norm"}


def _fake_serve(seen: dict[str, Any]) -> Callable[..., None]:
    def serve(running: Callable[[], bool], stop: Callable[[], None], lines: list[str]) -> None:
        try:
            seen["lines"] = lines
            url = lines[-1].split(" at ", 1)[1].split(" ", 1)[0]
            seen["url"] = url
            base = url.split("/?", 1)[0]
            if "127.0.0.1" in base and missing() is None and "data=" in url:
                body = urllib.request.urlopen(base + "/api/v1/load_node_data?node_data_index=0")
                seen["first_overlay"] = json.loads(json.load(body)["content"])
            seen["running"] = running()
        finally:
            stop()

    return serve


def test_cli_view_diff_in_explorer_opens_on_the_origin(
    runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    why = missing()
    if why is not None:
        pytest.skip(why)
    a, b = runs
    seen: dict[str, Any] = {}
    monkeypatch.setattr(view_cli, "_serve_until_stopped", _fake_serve(seen))
    result = CliRunner().invoke(main, ["view", "--diff", str(a), str(b), "--viewer", "explorer"])
    assert result.exit_code == 0, result.output
    assert "ops of B diverged from A" in result.output
    assert f"origin op op{NOISE_AT}" in seen["lines"][-1]
    assert f'"selectedNodeId": "op{NOISE_AT}"' in unquote(seen["url"])
    assert seen["running"]
    (graph_results,) = seen["first_overlay"].values()
    assert graph_results["results"][f"op{NOISE_AT}"]["bgColor"] == ORIGIN
    bad = CliRunner().invoke(
        main, ["view", "--diff", str(a), str(b), "--viewer", "explorer", "--depth", "2"]
    )
    assert bad.exit_code == 2


def test_cli_diff_view_serves_side_b_and_keeps_the_exit_status(
    runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = runs
    seen: dict[str, Any] = {}
    monkeypatch.setattr(view_cli, "_serve_until_stopped", _fake_serve(seen))
    result = CliRunner().invoke(main, ["diff", f"{a}:0", f"{b}:0", "--view"])
    assert result.exit_code == 1, result.output  # different
    assert "ops of B diverged from A" in result.output
    assert seen["url"].startswith("http://")
    assert seen["running"]
    both = CliRunner().invoke(main, ["diff", f"{a}:0", f"{b}:0", "--view", "--json"])
    assert both.exit_code == 2


def _branching_nan(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """x -> mm -> add(-2) -> log (NaN created) -> mul -> mean (loss), with a side branch
    exp(log) that the loss does not read, and an op before the origin."""
    tape = Tape()
    x = tape.tensor(np.full((4, 4), 0.5), name="x")
    w = tape.tensor(np.eye(4), name="w")
    y = tape.op("aten::mm.default", [x, w], np.matmul, module="a")
    s = tape.op("aten::add.Scalar", [y], lambda v: v - 2.0, module="a", attrs={"other": -2.0})
    lg = tape.op("aten::log.default", [s], np.log, module="b")
    side = tape.op("aten::exp.default", [lg], np.exp, module="side")
    h = tape.op("aten::mul.Scalar", [lg], lambda v: v * 3, module="head", attrs={"other": 3.0})
    loss = tape.op("aten::mean.default", [h], np.mean)
    path = tmp_path / "nan"
    with writer(path) as w_:
        w_.write_step(tape.record(0, loss=loss))
        w_.write_step(mlp_step(1))  # finite
    ops = {"mm": y, "add": s, "log": lg, "exp": side, "mul": h, "mean": loss}
    return path, ops  # tensor k is op k - 2's output (two inputs first)


def test_nan_path_runs_from_the_origin_to_the_loss(tmp_path: Path) -> None:
    path, tensors = _branching_nan(tmp_path)
    op = {name: t - 2 for name, t in tensors.items()}
    with tracefmt.open(path) as trace:
        step = trace.step(0)
        assert step.has_nan
        found = nan_path(step)
        assert found is not None
        assert found.origin == op["log"]
        assert found.to_loss
        assert set(found.ops) == {op["log"], op["mul"], op["mean"]}  # not exp, not before
        graph = export_step(trace, 0)
        clean = export_step(trace, 1)
    first = graph.overlays[0]
    assert first.key == "nan_path"
    results = _results(first.text)
    assert results[f"op{op['log']}"]["bgColor"] == ORIGIN
    assert results[f"op{op['mul']}"]["bgColor"] == HIGH
    assert f"op{op['exp']}" not in results
    assert graph.focus == f"op{op['log']}"
    assert "nan_path" not in {o.key for o in clean.overlays}
    assert clean.focus is None


def test_conversions_are_cached_by_file_and_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACEFMT_CACHE_DIR", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" / "explorer"
    monkeypatch.setattr(replayer.view.cache, "cache_dir", cache_dir)  # conftest's undone
    path = tmp_path / "step.tft.h5"
    write_training_step(path, 3000)
    with tracefmt.open(path) as trace:
        cold, hit = cached_export(trace, 0)
        assert not hit
        warm, hit = cached_export(trace, 0)
        assert hit
        other, hit = cached_export(trace, 0, phase="forward")
        assert not hit
    assert cold.graphs > 1  # an overview and parts: graph_of spans several graphs
    for field in ("graph_id", "text", "overlays", "ops", "inputs", "widest", "phases"):
        assert getattr(warm, field) == getattr(cold, field), field
    assert warm.graph_of == cold.graph_of
    assert (warm.graphs, warm.overview_nodes, warm.focus) == (cold.graphs, cold.overview_nodes, None)
    assert other.text != cold.text
    # A rewritten file is converted again; a damaged entry too.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with tracefmt.open(path) as trace:
        _, hit = cached_export(trace, 0)
        assert not hit
        for entry in cache_dir().iterdir():
            (entry / "meta.json").write_text("{not json")
        _, hit = cached_export(trace, 0)
        assert not hit
        again, hit = cached_export(trace, 0)
        assert hit
    assert again.text == cold.text


def test_cli_view_of_a_nan_step_opens_on_the_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = missing()
    if why is not None:
        pytest.skip(why)
    path, tensors = _branching_nan(tmp_path)
    origin = f"op{tensors['log'] - 2}"
    seen: dict[str, Any] = {}
    monkeypatch.setattr(view_cli, "_serve_until_stopped", _fake_serve(seen))
    args = ["view", str(path), "--step", "0", "--viewer", "explorer"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert any(f"NaN/Inf entered at {origin}" in line for line in seen["lines"])
    assert f'"selectedNodeId": "{origin}"' in unquote(seen["url"])
    (first,) = seen["first_overlay"].values()
    assert first["name"] == "NaN path to loss"
    assert first["results"][origin]["bgColor"] == ORIGIN
