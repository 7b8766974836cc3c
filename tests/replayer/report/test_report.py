"""``replayer report``: the page's sections from a recorded run, and the page in a browser."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tracefmt
from replayer.report import ReportOptions, build_report
from replayer.report.cli import report_cmd
from replayer.report.gather import costly_ops, focus_step
from replayer.why import explain
from tests import browser

ROOT = Path(__file__).resolve().parents[3]
GPT_SMALL = ["--layers", "1", "--embd", "32", "--heads", "2", "--block", "16", "--batch", "8"]
INJECT = 10


def _gpt(out: Path, *args: str) -> Path:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: recording the GPT example needs it")
    cmd = [sys.executable, "-m", "recorder.examples.gpt", *GPT_SMALL, "--quiet"]
    cmd += ["--out", str(out), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def flight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flight run whose weight turns Inf before step 10: steps 6..10 on disk, one event."""
    out = tmp_path_factory.mktemp("report") / "flight"
    return _gpt(out, "--mode", "flight", "--inject-nan", str(INJECT), "--steps", "12", "--ring", "4")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five fully recorded steps, nothing wrong."""
    return _gpt(tmp_path_factory.mktemp("report") / "clean", "--steps", "5")


def test_the_detailed_step_is_the_event_step_else_the_median_one(flight: Path, clean: Path) -> None:
    with tracefmt.open(flight) as t:
        assert focus_step(t, 0) == INJECT
    with tracefmt.open(clean) as t:
        durations = sorted((s.duration, s.step) for s in t.summaries(0))
        assert focus_step(t, 0) == durations[2][1]
        assert focus_step(t, 0, 3) == 3
        with pytest.raises(tracefmt.TraceError, match="no full step 99"):
            focus_step(t, 0, 99)


def test_costly_ops_add_up_to_the_step_and_come_largest_first(clean: Path) -> None:
    with tracefmt.open(clean) as t:
        step = t.step(2, 0)
    ops = costly_ops(step, limit=10_000)
    measured = sum(max(op.host_ns or 0, 0) for op in step.ops)
    assert sum(o.host_ms for o in ops) == pytest.approx(measured / 1e6)
    assert sum(o.calls for o in ops) == len(step.ops)
    assert sum(o.share for o in ops) == pytest.approx(1.0)
    times = [o.host_ms for o in ops]
    assert times == sorted(times, reverse=True)
    assert len(costly_ops(step, limit=3)) == 3


def test_the_page_explains_the_event_and_names_the_run(flight: Path) -> None:
    with tracefmt.open(flight) as t:
        html = build_report(t)
        events = len(explain(t).explanations)
    assert events >= 1
    assert "<script" not in html  # nothing runs, nothing is fetched
    assert not re.search(r"""(src|href)=["']https?://""", html)
    for anchor in ("run", "model", "events", "timelines", "ops", "export"):
        assert f'id="{anchor}"' in html
    assert "CausalSelfAttention" in html  # the model table names the classes (format 1.5)
    assert f"Events ({events})" in html
    assert "nonfinite" in html or "non-finite" in html
    assert f"step {INJECT}" in html


def test_a_rank_the_run_lacks_is_refused_with_the_ranks_it_has(clean: Path) -> None:
    with tracefmt.open(clean) as t, pytest.raises(tracefmt.TraceError, match="rank"):
        build_report(t, ReportOptions(rank=5))


def test_the_command_writes_the_page_and_says_where(clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(report_cmd, [str(clean), "-o", str(out), "--step", "1"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert "Rank 0, step 1" in out.read_text(encoding="utf-8")
    bad = CliRunner().invoke(report_cmd, [str(clean), "-o", str(out), "--step", "77"])
    assert bad.exit_code != 0


@pytest.mark.skipif(browser.unavailable() is not None, reason=browser.unavailable() or "")
def test_the_page_loads_in_chromium_without_errors_and_every_image_decodes(
    flight: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    result = CliRunner().invoke(report_cmd, [str(flight), "-o", str(out)])
    assert result.exit_code == 0, result.output
    loaded = browser.load_page(str(out))
    (tmp_path / "report.png").write_bytes(loaded.screenshot)
    assert loaded.errors == ()
    assert loaded.broken == ()
    assert {"run", "model", "events", "timelines", "ops", "export"} <= set(loaded.anchors)
    assert loaded.images >= 4  # loss, step time, gradient and output norms per module
    assert len(loaded.screenshot) > 10_000


def test_the_charts_show_leaf_modules_and_the_download_is_the_step_trace(flight: Path) -> None:
    import base64
    import json

    from replayer.report.charts import run_charts

    with tracefmt.open(flight) as t:
        charts = {c.title: c for c in run_charts(t, 0, limit=3)}
        html = build_report(t)
    assert charts["Loss"].png.startswith(b"\x89PNG")
    grads = charts["Gradient norm per module"]
    assert grads.png
    assert "more leaf modules not drawn" in grads.caption
    href = re.search(r'download="step10.json" href="data:application/json;base64,([^"]+)"', html)
    assert href is not None
    events = json.loads(base64.b64decode(href.group(1)))["traceEvents"]
    assert any(e.get("ph") == "X" and e.get("name", "").startswith("aten::") for e in events)
