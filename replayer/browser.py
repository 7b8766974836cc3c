"""Headless Chromium, driven over the DevTools protocol on a pipe: does Netron render the model?

No extra package: Chromium's ``--remote-debugging-pipe`` reads NUL-terminated JSON commands on
file descriptor 3 and writes replies on 4.  :func:`render` opens a served Netron page in a fresh
profile (with the ``consent`` cookie set, or a consent dialog blocks the view), waits until the
graph is drawn, and returns the number of top-level nodes, the time to first rendered graph, any
message Netron showed instead (such as its expiry notice, "Please update to the newest
version.") and a PNG screenshot.  Used by the browser test and ``bench/replay.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

#: Flags for a quiet, offline, throwaway browser.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
    "--remote-debugging-pipe",
)
#: Netron's refusal of a build older than 180 days.
EXPIRY_TEXT = "Please update to the newest version"

_PROBE = """(() => {
  const canvas = document.getElementById('canvas');
  const nodes = canvas ? Array.from(canvas.querySelectorAll('.graph-node'))
      .filter((n) => !n.parentElement.closest('.graph-node')).length : -1;
  const text = document.getElementById('message-text');
  return JSON.stringify({nodes: nodes, message: text ? text.innerText : '',
                         body: document.body ? document.body.className : ''});
})()"""


@dataclass(frozen=True)
class Render:
    """What the page showed."""

    nodes: int
    seconds: float
    message: str
    screenshot: bytes

    @property
    def expired(self) -> bool:
        return EXPIRY_TEXT in self.message


class BrowserError(Exception):
    """Chromium could not be started or driven."""


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless Chromium with a fresh profile, driven over the DevTools pipe."""

    def __init__(self, executable: str | None = None) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserError("No chromium on PATH; install it (apt-get install chromium).")
        self._profile = tempfile.mkdtemp(prefix="replayer-chromium-")
        import sys

        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        # The protocol wants the pipes on fds 3 (commands in) and 4 (replies out): a tiny Python
        # trampoline moves them there, whatever numbers they have here, then becomes Chromium.
        trampoline = (
            "import fcntl, os, sys; a, b = (fcntl.fcntl(int(f), fcntl.F_DUPFD, 10) "
            "for f in sys.argv[1:3]); os.dup2(a, 3); os.dup2(b, 4); os.close(a); "
            "os.close(b); os.execv(sys.argv[3], sys.argv[3:])"
        )
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                trampoline,
                str(to_child),
                str(from_child),
                exe,
                *FLAGS,
                f"--user-data-dir={self._profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_child, from_child),
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next = 0

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its reply (events in between are dropped)."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _receive(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time.")
            ready, _, _ = select.select([self._read], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe (did it crash?).")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(BrowserError, OSError):
                self.send("Browser.close", timeout=5)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)


def render(
    url: str, *, timeout: float = 60.0, settle: float = 0.5, executable: str | None = None
) -> Render:
    """Open ``url`` (a Netron page), wait for its graph; see the module docstring."""
    with Chromium(executable) as browser:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        browser.send("Network.enable", session=session)
        parts = urlparse(url)
        browser.send(
            "Network.setCookie",
            {
                "name": "consent",
                "value": str(int(time.time() * 1000)),
                "url": f"{parts.scheme}://{parts.netloc}/",
            },
            session=session,
        )
        browser.send("Page.enable", session=session)
        start = time.monotonic()
        browser.send("Page.navigate", {"url": url}, session=session)
        nodes, message, first = -1, "", None
        deadline = start + timeout
        while time.monotonic() < deadline:
            value = browser.send(
                "Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=session
            )["result"].get("value")
            state = json.loads(value) if isinstance(value, str) else {}
            nodes, message = int(state.get("nodes", -1)), str(state.get("message", ""))
            if EXPIRY_TEXT in message:
                break
            if nodes > 0 and first is None:
                first = time.monotonic() - start
            if first is not None and time.monotonic() - start - first >= settle:
                break
            time.sleep(0.05)
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        return Render(
            nodes=max(nodes, 0),
            seconds=first if first is not None else float("nan"),
            message=message,
            screenshot=base64.b64decode(shot.get("data", "")),
        )
