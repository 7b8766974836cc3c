"""``replayer view``: Netron on 127.0.0.1, defaults for large steps, and the page in Chromium.

The browser tests drive headless Chromium with Playwright (``tests/browser.py``); ``make setup``
installs Playwright (the dev extra) and ``make system-deps`` installs Chromium.  Without either
they skip and say so, except in CI (``CI`` set), where they fail.  Netron's web UI refuses to
show models about 180 days after its build; two tests notice that: one reads the build date, one
serves a copy of the UI dated in the past and checks that :func:`tests.browser.render` reports
the refusal.
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import onnx
import pytest

import tracefmt
from replayer.view.netron import NODE_BUDGET, prepare, serve_step, stop
from tests.browser import EXPIRY_TEXT, render, unavailable
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import empty_stats

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def chromium() -> None:
    """Skip without Chromium or Playwright, except in CI (``CI`` set), where the browser tests
    must run."""
    why = unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"The browser tests must run in CI: {why}")
        pytest.skip(why)


needs_chromium = pytest.mark.usefixtures("chromium")


def test_a_missing_chromium_is_named_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip (or, in CI, the failure) says what is missing and how to install it."""
    monkeypatch.setenv("PATH", "")
    why = unavailable()
    assert why is not None
    assert "chromium" in why
    assert "make system-deps" in why


@pytest.fixture
def wide_trace(tmp_path: Path) -> Path:
    """600 relu ops in 60 modules of 10 (``blocks.<i>.layer<j>``), no values: too many to show
    flat, so the view folds modules."""
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (4, 4), role=Role.INPUT, name="x")
    for i in range(600):
        y = g.add_tensor(DType.FLOAT32, (4, 4), producer=g.num_ops)
        g.add_op(
            "aten::relu.default",
            phase=Phase.FORWARD,
            module=f"blocks.{i // 10}.layer{i % 10}",
            inputs=[x],
            outputs=[y],
        )
        x = y
    graph = g.finish()
    path = tmp_path / "wide.tft.h5"
    with TraceWriter(path) as w:
        w.write_step(StepRecord(step=0, graph=graph, stats=empty_stats(graph.num_tensors)))
        w.flush()
    return path


@pytest.fixture
def served(small_trace: Path) -> Iterator[tuple[str, str, int]]:
    with tracefmt.open(small_trace) as trace:
        info = serve_step(trace, 0, phase="forward")
    yield info.url, info.host, info.port
    stop(info.host, info.port)


def test_view_serves_the_model_on_loopback(served: tuple[str, str, int], small_trace: Path) -> None:
    url, host, port = served
    assert host == "127.0.0.1"
    assert url == f"http://127.0.0.1:{port}/"
    page = urllib.request.urlopen(url, timeout=10).read().decode()
    path = re.search(r'<meta name="file" content="([^"]+)">', page)
    assert path is not None
    model = onnx.load_from_string(
        urllib.request.urlopen(url + path.group(1).lstrip("/"), timeout=10).read()
    )
    assert [n.op_type for n in model.graph.node][:2] == ["mm", "Relu"]


def test_stop_stops_the_server(small_trace: Path) -> None:
    import netron

    with tracefmt.open(small_trace) as trace:
        info = serve_step(trace, 0)
    assert netron.status((info.host, info.port))
    stop(info.host, info.port)
    assert not netron.status((info.host, info.port))


def test_default_view_folds_a_large_step_and_says_how_to_expand(wide_trace: Path) -> None:
    with tracefmt.open(wide_trace) as trace:
        data, nodes, depth, ops, message = prepare(trace, 0)
        _, flat_nodes, flat_depth, _, _ = prepare(trace, 0, auto_depth=False)
    assert ops == 600
    assert flat_depth is None
    assert flat_nodes == 600
    assert depth is not None
    assert nodes <= NODE_BUDGET
    assert len(onnx.load_from_string(data).graph.node) == nodes
    assert "--depth" in message
    assert "expand" in message


def test_view_command_prints_the_url_and_stops_on_ctrl_c(small_trace: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "replayer.cli", "view", str(small_trace), "--step", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    try:
        url = None
        for line in proc.stdout:
            match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
            if match:
                url = match.group(1)
                break
        assert url is not None
        assert urllib.request.urlopen(url, timeout=10).status == 200
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=20) == 0
        assert "stopped" in rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_netron_build_is_not_expired() -> None:
    """Netron's UI refuses models ~180 days after its build date: upgrade netron before then."""
    import netron

    index = Path(netron.__file__).with_name("index.html").read_text()
    match = re.search(r'<meta name="date" content="([0-9-]+)', index)
    assert match is not None
    built = dt.date.fromisoformat(match.group(1))
    age = (dt.date.today() - built).days
    assert age < 180, (
        f"netron {netron.__version__} was built on {built}, {age} days ago: its web "
        "UI now refuses to show models ('Please update to the newest version.'). "
        "Upgrade netron (pip install -U netron)."
    )


@needs_chromium
def test_netron_renders_every_top_level_node(small_trace: Path, tmp_path: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        data, nodes, _, _, _ = prepare(trace, 0, phase="all", depth=0, auto_depth=False)
    from replayer.view.netron import serve

    host, port = serve(data, "small.onnx")
    try:
        shot = render(f"http://{host}:{port}/", timeout=60)
    finally:
        stop(host, port)
    (tmp_path / "netron-small.png").write_bytes(shot.screenshot)
    assert not shot.expired, shot.message
    assert shot.nodes == nodes == len(onnx.load_from_string(data).graph.node)
    assert shot.screenshot.startswith(b"\x89PNG")


@needs_chromium
def test_netron_renders_the_gpt_step_at_the_default_view(
    record_trace: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tracefmt.open(record_trace("gpt")) as trace:
        info = serve_step(trace, 1)
    try:
        shot = render(info.url, timeout=120)
    finally:
        stop(info.host, info.port)
    screenshot = tmp_path / "netron-gpt.png"
    screenshot.write_bytes(shot.screenshot)
    assert not shot.expired, shot.message
    assert shot.nodes == info.nodes
    with capsys.disabled():
        print(
            f"\nGPT step 1 default view ({info.message.split('.')[0]}): {shot.nodes} nodes, "
            f"first graph after {shot.seconds:.2f} s; screenshot {screenshot}"
        )


@needs_chromium
def test_render_notices_netrons_expiry_refusal(tmp_path: Path, small_trace: Path) -> None:
    """A copy of Netron's UI dated 200 days ago, served as netron would, must be reported."""
    import netron

    ui = tmp_path / "ui"
    shutil.copytree(
        Path(netron.__file__).parent, ui, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    old = (dt.date.today() - dt.timedelta(days=200)).isoformat()
    index = (ui / "index.html").read_text()
    index = re.sub(
        r'<meta name="date" content="[^"]*">', f'<meta name="date" content="{old} 00:00:00">', index
    )
    index = re.sub(
        r'(<meta name="version" content="[^"]*">)',
        r'\1\n<meta name="type" content="Python">'
        '\n<meta name="file" content="/data/model.onnx">',
        index,
    )
    (ui / "index.html").write_text(index)
    with tracefmt.open(small_trace) as trace:
        data, _, _, _, _ = prepare(trace, 0)
    (ui / "data").mkdir()
    (ui / "data" / "model.onnx").write_bytes(data)
    handler = partial(_QuietHandler, directory=str(ui))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        shot = render(f"http://127.0.0.1:{server.server_address[1]}/index.html", timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert shot.expired
    assert EXPIRY_TEXT in shot.message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
