"""Test harness: does Netron render a served model?  Headless Chromium driven by Playwright.

Used by the browser tests (``tests/replayer/view``) and ``bench/replay.py``; it lives here, not in
the shipped packages, because only they need a browser.  Playwright drives the system's Chromium
(``make system-deps`` installs Debian's) by ``executable_path``: Playwright's own browser
downloads are never used, so this works offline.

:func:`render` opens a Netron page in a fresh profile (with the ``consent`` cookie set, or a
consent dialog blocks the view), waits until the graph is drawn, and returns the number of
top-level nodes, the time to first rendered graph, any message Netron showed instead (such as
its expiry notice, "Please update to the newest version.") and a PNG screenshot.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy as np
    from playwright.sync_api import Page

#: Netron's refusal of a build older than 180 days.
EXPIRY_TEXT = "Please update to the newest version"
#: Chromium executables looked for on PATH, in order.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# A small /dev/shm (containers) crashes tabs unless Chromium keeps shared memory in /tmp; Netron
# draws SVG, so no GPU (nor software GL) is needed.
_ARGS = ["--disable-dev-shm-usage", "--disable-gpu"]

# Netron replaces window.eval with a function that throws, so page.evaluate() fails on its pages:
# everything is read through locators, which run in Playwright's own isolated world.
#: Graph nodes drawn at the top level (not those inside an expanded module node).
TOP_LEVEL_NODES = "#canvas .graph-node:not(.graph-node .graph-node)"
#: Netron's message box (errors, the expiry notice).
MESSAGE = "#message-text"


@dataclass(frozen=True)
class Render:
    """What the page showed: top-level nodes, seconds to first graph (NaN if none), the
    message box's text and a PNG screenshot."""

    nodes: int
    seconds: float
    message: str
    screenshot: bytes

    @property
    def expired(self) -> bool:
        """Netron refused to show the model because its build is too old."""
        return EXPIRY_TEXT in self.message


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why :func:`render` cannot run here (a sentence naming the fix), or None when it can."""
    if find_chromium() is None:
        return "chromium is not installed; `make system-deps` installs it (apt-get install chromium)."
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed; `make setup` installs it (the dev extra)."
    return None


def render(
    url: str, *, timeout: float = 60.0, settle: float = 0.5, executable: str | None = None
) -> Render:
    """Open ``url`` (a Netron page) in headless Chromium and wait for its graph.

    Returns once the first node has been drawn and ``settle`` more seconds have passed, once
    Netron shows its expiry notice, or after ``timeout`` seconds (then ``seconds`` is NaN and
    ``nodes`` whatever was drawn, so a test's assertion shows what the page said).
    """
    from playwright.sync_api import sync_playwright

    exe = executable or find_chromium()
    if exe is None:
        raise RuntimeError(unavailable() or "chromium is not installed.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=exe, headless=True, args=_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            parts = urlsplit(url)
            # Netron's own cookie value is the consent time in milliseconds.
            consent = str(int(time.time() * 1000))
            origin = f"{parts.scheme}://{parts.netloc}/"
            context.add_cookies([{"name": "consent", "value": consent, "url": origin}])
            return _watch(context.new_page(), url, timeout, settle)
        finally:
            browser.close()


def _watch(page: Page, url: str, timeout: float, settle: float) -> Render:
    """Navigate ``page`` to ``url`` and record what it shows (see :func:`render`)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    nodes = page.locator(TOP_LEVEL_NODES)
    refusal = page.locator(MESSAGE, has_text=EXPIRY_TEXT)
    start = time.monotonic()
    page.goto(url, wait_until="commit", timeout=timeout * 1000)
    left = max(timeout - (time.monotonic() - start), 0.001)
    with contextlib.suppress(PlaywrightTimeout):  # then report what the page shows
        nodes.or_(refusal).first.wait_for(state="attached", timeout=left * 1000)
    elapsed = time.monotonic() - start
    drawn = nodes.count()
    if drawn > 0 and refusal.count() == 0:
        page.wait_for_timeout(settle * 1000)
        drawn = nodes.count()
    return Render(
        nodes=drawn,
        seconds=elapsed if drawn > 0 else math.nan,
        message=_message(page),
        screenshot=page.screenshot(type="png"),
    )


def _message(page: Page) -> str:
    """The text of Netron's message box, or "" when the page has none."""
    box = page.locator(MESSAGE)
    return box.first.inner_text(timeout=5000) if box.count() else ""


@dataclass(frozen=True)
class PageLoad:
    """What a static page did when opened: its console errors and failed requests, its images
    (``broken``: the ``src`` of each that did not decode), the sections' ids, a full-page PNG."""

    errors: tuple[str, ...]
    images: int
    broken: tuple[str, ...]
    anchors: tuple[str, ...]
    screenshot: bytes


def load_page(path: str, *, timeout: float = 60.0, executable: str | None = None) -> PageLoad:
    """Open the local HTML file ``path`` in headless Chromium with no network, wait until it
    has loaded, and report what it did (see :class:`PageLoad`)."""
    from pathlib import Path

    from playwright.sync_api import sync_playwright

    exe = executable or find_chromium()
    if exe is None:
        raise RuntimeError(unavailable() or "chromium is not installed.")
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=exe, headless=True, args=_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900}, offline=True)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:200]}"))
            page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=timeout * 1000)
            images = page.locator("img")
            broken = [
                (images.nth(i).get_attribute("src") or "")[:80]
                for i in range(images.count())
                if not images.nth(i).evaluate("im => im.complete && im.naturalWidth > 0")
            ]
            anchors = page.locator("section[id]").evaluate_all("els => els.map(e => e.id)")
            return PageLoad(
                errors=tuple(errors),
                images=images.count(),
                broken=tuple(broken),
                anchors=tuple(anchors),
                screenshot=page.screenshot(type="png", full_page=True),
            )
        finally:
            browser.close()


# --- Model Explorer (``replayer view --viewer explorer``) -------------------------------------
# Model Explorer draws with WebGL: software GL (SwiftShader) in headless Chromium.  Its graph is
# not in the DOM, so a render is seen in the canvas's pixels; its side panels are DOM.
_EXPLORER_ARGS = ["--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
#: The canvas the graph is drawn in.
EXPLORER_CANVAS = "webgl-renderer canvas.main"
#: Pixels darker than this (sum of R, G, B) count as drawn (text, borders, edges).
_INK = 600


def _pixels(png: bytes) -> np.ndarray:
    """The RGB pixels of a PNG as an (n, 3) int array."""
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return np.asarray(image, dtype=np.int32).reshape(-1, 3)


def ink(png: bytes) -> int:
    """How many pixels of a PNG are drawn (darker than the white background)."""
    return int((_pixels(png).sum(axis=1) < _INK).sum())


def near(png: bytes, colours: Iterable[str], tolerance: int = 6) -> int:
    """How many pixels of a PNG are within ``tolerance`` (per channel) of one of ``colours``
    (``#rrggbb``)."""
    import numpy as np

    pixels = _pixels(png)
    hit = np.zeros(len(pixels), dtype=bool)
    for c in set(colours):
        want = np.array([int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)])
        hit |= np.abs(pixels - want).max(axis=1) <= tolerance
    return int(hit.sum())


class ExplorerPage:
    """A Model Explorer page open in headless Chromium (see :func:`explorer_page`)."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def open(self, url: str, *, timeout: float = 60.0, min_ink: int = 200) -> float:
        """Navigate to ``url`` and wait until the canvas shows a drawn graph; the seconds from
        navigation to then (NaN when nothing was drawn within ``timeout``)."""
        start = time.monotonic()
        self.page.goto(url, wait_until="commit", timeout=timeout * 1000)
        canvas = self.page.locator(EXPLORER_CANVAS)
        canvas.wait_for(state="attached", timeout=timeout * 1000)
        while time.monotonic() - start < timeout:
            if ink(canvas.screenshot()) >= min_ink:
                return time.monotonic() - start
            self.page.wait_for_timeout(50)
        return math.nan

    def canvas_png(self) -> bytes:
        """A PNG of the graph canvas."""
        return self.page.locator(EXPLORER_CANVAS).screenshot()

    def show_overlay(self, name: str, *, settle: float = 1.5) -> bool:
        """Make the overlay (node-data run) named ``name`` the one that colours the graph, from
        the side panel shown while nothing is selected; whether the page now marks it shown."""
        row = self.page.locator("node-data-provider-summary-panel .index-row", has_text=name)
        eye = row.locator(".icon-container.visibility")
        eye.click(timeout=10_000)
        self.page.wait_for_timeout(settle * 1000)
        return eye.inner_text().strip() == "visibility"

    def select_node(self, node_id: str, *, timeout: float = 30.0) -> str:
        """Select (and so reveal, expanding the layers that hold it) the node ``node_id``; the
        side panel's text once it shows that node."""
        self.page.evaluate(
            "id => window.postMessage({cmd: 'model-explorer-select-node-by-node-id', nodeId: id}, '*')",
            node_id,
        )
        panel = self.page.locator("info-panel", has_text=node_id)
        panel.wait_for(state="attached", timeout=timeout * 1000)
        self.page.wait_for_timeout(1000)  # the reveal animates
        return panel.inner_text()

    def screenshot(self) -> bytes:
        return self.page.screenshot(type="png")


@contextlib.contextmanager
def explorer_page(*, executable: str | None = None) -> Iterator[ExplorerPage]:
    """A fresh headless Chromium page for Model Explorer, offline except for the server it
    opens (the page's font and version-check requests to other hosts fail harmlessly)."""
    from playwright.sync_api import sync_playwright

    exe = executable or find_chromium()
    if exe is None:
        raise RuntimeError(unavailable() or "chromium is not installed.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=exe, headless=True, args=_EXPLORER_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            # Nothing but the loopback server: a font request to Google would wait on DNS.
            context.route(
                "**/*",
                lambda route: (
                    route.continue_()
                    if urlsplit(route.request.url).hostname == "127.0.0.1"
                    else route.abort()
                ),
            )
            yield ExplorerPage(context.new_page())
        finally:
            browser.close()
