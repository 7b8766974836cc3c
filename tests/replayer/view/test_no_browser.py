"""No shipped module drives a browser: the harness is test code (``tests/browser.py``).

``replayer view`` only serves Netron and, with ``--browse``, asks the user's own browser to open
it; automating a browser is something only the tests and ``bench/replay.py`` do.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("tracefmt", "recorder", "replayer")
#: Browser-automation libraries no shipped module may import.
AUTOMATION = frozenset({"playwright", "selenium", "pyppeteer", "websocket", "websockets"})
#: Words that only a browser driver would contain.
DRIVER_WORDS = re.compile(r"chromium|devtools|remote-debugging", re.IGNORECASE)


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _driving(name: str, source: str) -> str | None:
    """What in module ``name`` looks like driving a browser, as a sentence, or None."""
    imported = _imported_roots(source) & AUTOMATION
    if imported:
        return f"{name} imports {sorted(imported)}."
    words = sorted({m.group(0).lower() for m in DRIVER_WORDS.finditer(source)})
    if words:
        return f"{name} mentions {words}."
    return None


def test_the_packages_have_modules_to_check() -> None:
    found = {p.relative_to(ROOT).parts[0] for p in _modules()}
    assert found == set(PACKAGES)


def test_no_module_drives_a_browser() -> None:
    found = [
        why
        for path in _modules()
        if (why := _driving(str(path.relative_to(ROOT)), path.read_text())) is not None
    ]
    assert not found, " ".join(found) + " Browser drivers belong in tests/browser.py."


def test_the_check_notices_a_driver() -> None:
    playwright = "from playwright.sync_api import sync_playwright\n"
    assert _driving("a.py", playwright) == "a.py imports ['playwright']."
    pipe = "args = ['--remote-debugging-pipe']  # Chromium's DevTools\n"
    assert _driving("b.py", pipe) == "b.py mentions ['chromium', 'devtools', 'remote-debugging']."
    assert _driving("c.py", "import webbrowser\nwebbrowser.open(url)\n") is None
