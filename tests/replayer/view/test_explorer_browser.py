"""``replayer view --viewer explorer``'s page in headless Chromium: the GPT example step and a
synthetic 50,000-op step render their top level (the 50,000-op step's overview, its big layers
being graphs of their own), the page opened on an op shows it with the layers that hold it
expanded (in the 50,000-op step: inside its part), and switching overlays recolours the graph.

One server and one browser per graph, each used by one test and closed before the next
(Playwright's sync API runs one at a time; 2 shared vCPUs).  Skips without Chromium,
Playwright or Model Explorer (except in CI, where a missing browser fails).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tracefmt
from replayer.view.explorer import export_step
from replayer.view.webapp import missing, serve_graph
from tests.browser import ExplorerPage, explorer_page, ink, near, unavailable
from tests.replayer.view._big import write_training_step


def _skip_without_tools() -> None:
    why = unavailable() or missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"The browser tests must run in CI: {why}")
        pytest.skip(why)


def _served(path: Path, step: int) -> Iterator[tuple[Any, ExplorerPage, float]]:
    _skip_without_tools()
    with tracefmt.open(path) as t:
        graph = export_step(t, step)
    server = serve_graph(graph)
    try:
        with explorer_page() as page:
            seconds = page.open(server.url, timeout=120)
            yield server, page, seconds
    finally:
        server.stop()


@pytest.fixture
def gpt_page(record_trace: Callable[[str], Path]) -> Iterator[tuple[Any, ExplorerPage, float]]:
    yield from _served(record_trace("gpt"), 1)


@pytest.fixture
def big_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ExplorerPage, float]]:
    _skip_without_tools()
    path = tmp_path_factory.mktemp("big") / "50k.tft.h5"
    write_training_step(path, 50_000)
    yield from _served(path, 0)


def _check(served: tuple[Any, ExplorerPage, float], op: str, tmp_path: Path, name: str) -> None:
    server, page, seconds = served
    assert seconds == seconds, "the top level was never drawn"  # NaN: nothing drawn
    top = page.canvas_png()
    assert ink(top) > 200
    # The top level is collapsed phases: switching overlays recolours their summary bars.
    colours = {c for o in server.graph.overlays if o.key == "host_time" for c in o.colours().values()}
    assert page.show_overlay("host time (us)")
    assert near(page.canvas_png(), colours, tolerance=2) > 50
    # Opening the page on an op inside a module (in a large step: in a part, a graph of its
    # own) expands the layers above it and shows the op.
    again = page.open(server.url_for(op), timeout=120)
    assert again == again, "the op's graph was never drawn"
    text = page.select_node(op)
    assert op in text
    assert "aten::" in text
    assert server.graph.graph_of[op] in page.page.locator("body").inner_text()
    opened = page.canvas_png()
    assert opened != top
    shot = tmp_path / f"explorer-{name}.png"
    shot.write_bytes(page.screenshot())
    print(f"{name}: top level drawn after {seconds:.2f} s; screenshot {shot}")


def test_gpt_step_renders_expands_and_recolours(
    gpt_page: tuple[Any, ExplorerPage, float], tmp_path: Path
) -> None:
    server = gpt_page[0]
    nodes = [n for g in server.graph.data["graphs"] for n in g["nodes"]]
    op = next(n["id"] for n in nodes if n["namespace"].startswith("forward/h/0/attn/"))
    _check(gpt_page, op, tmp_path, "gpt")


def test_50k_step_renders_expands_and_recolours(
    big_page: tuple[Any, ExplorerPage, float], tmp_path: Path
) -> None:
    server = big_page[0]
    assert server.graph.ops >= 49_000
    assert server.graph.graphs > 1  # an overview and its parts
    nodes = [n for g in server.graph.data["graphs"][1:] for n in g["nodes"]]
    op = next(
        n["id"]
        for n in nodes
        if n["namespace"].startswith("backward/layers/") and n["id"].startswith("op")
    )
    _check(big_page, op, tmp_path, "50k")
