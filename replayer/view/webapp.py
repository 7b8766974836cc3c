"""Model Explorer's web app served from memory on 127.0.0.1, without its own server.

Model Explorer's server (``model-explorer``) needs flask and friends and has an endpoint that
returns any local file it is asked for (``/api/v1/read_text_file?path=``).  This serves only what
the page needs to show one graph and its overlays: the app's static files (from the installed
``ai-edge-model-explorer`` package, which is installed without its 128 MB native adapter), the
graph (``/api/v1/load_graphs_json``), the node data (``/api/v1/load_node_data``), the extension
list naming its JSON adapter, and empty answers to the version check and the server-push stream.
It never reads a path a request names, and it binds 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from replayer.errors import ReplayError
from replayer.view.explorer import ExplorerGraph, graph_json

__all__ = ["HOST", "ExplorerServer", "missing", "serve_graph", "web_app_dir"]

#: The only address the server listens on.
HOST = "127.0.0.1"
#: How to install the web app (the package without its native adapter).
INSTALL = (
    "Install Model Explorer's web app without its 128 MB native adapter: "
    "pip install --no-deps ai-edge-model-explorer (or `make setup`)."
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".wasm": "application/wasm",
}
_NO_VERSION = {"version": "", "runningVersion": "", "releaseUrl": "", "desktopAppUrl": ""}
_JSON_ADAPTER = {
    "fileExts": ["json"],
    "type": "adapter",
    "id": "builtin_json",
    "name": "JSON adapter",
    "description": "Convert graphs json data file or tfjs model.",
}


def web_app_dir() -> Path | None:
    """The installed Model Explorer web app's folder, or None (found without importing the
    package, whose ``__init__`` needs flask)."""
    try:
        spec = importlib.util.find_spec("model_explorer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        folder = Path(root) / "web_app"
        if (folder / "index.html").is_file():
            return folder
    return None


def missing() -> str | None:
    """Why the Model Explorer viewer cannot run here (a sentence with the fix), or None."""
    return None if web_app_dir() is not None else f"Model Explorer is not installed. {INSTALL}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    routes: ClassVar[dict[str, str]] = {
        "/api/v1/get_extensions": "extensions",
        "/api/v1/check_new_version": "version",
        "/api/v1/load_graphs_json": "graph",
        "/api/v1/load_node_data": "node_data",
        "/apistream/server_director": "stream",
        "/check_health": "health",
    }

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the page asks for dozens of files."""

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: object) -> None:
        self._send(200, json.dumps(data).encode(), "application/json")

    def do_GET(self) -> None:
        # A page of another origin that rebinds its DNS name to 127.0.0.1 sends its own name:
        # answer only requests addressed to this server by its address.
        if self.headers.get("Host") != f"{HOST}:{self.server.server_address[1]}":
            self._send(403, b"", "text/plain")
            return
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        route = self.routes.get(parts.path)
        app = self.server.app
        if route == "extensions":
            self._json([_JSON_ADAPTER])
        elif route == "version":
            self._json(_NO_VERSION)
        elif route == "health":
            self._send(200, b"model_explorer_ok", "text/plain")
        elif route == "stream":  # no server pushes: ask the page to reconnect in a day
            self._send(200, b"retry: 86400000\n\n", "text/event-stream")
        elif route == "graph":
            self._send(200, app.graph, "application/json")
        elif route == "node_data":
            index = query.get("node_data_index", [""])[0]
            if not (index.isascii() and index.isdigit()) or int(index) >= len(app.node_data):
                self._send(404, b"{}", "application/json")
            else:
                self._json({"content": app.node_data[int(index)]})
        else:
            self._static(unquote(parts.path))

    def _static(self, path: str) -> None:
        root = self.server.app.root
        rel = path.lstrip("/") or "index.html"
        target = (root / rel).resolve()
        if root not in target.parents or not target.is_file() or ".." in rel.split("/"):
            self._send(404, b"not found", "text/plain")
            return
        self._send(200, target.read_bytes(), _TYPES.get(target.suffix, "application/octet-stream"))


@dataclass(frozen=True)
class _App:
    root: Path
    graph: bytes
    node_data: tuple[str, ...]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: _App


@dataclass(frozen=True)
class ExplorerServer:
    """A running server: its page's URL (which names the graph and overlays to load)."""

    url: str
    host: str
    port: int
    graph: ExplorerGraph
    _server: _Server
    _thread: threading.Thread

    def running(self) -> bool:
        return self._thread.is_alive()

    def url_for(self, node: str) -> str:
        """The page's URL opened on the graph that holds ``node`` with that node selected (its
        layers expanded)."""
        return page_url(self.port, self.graph, focus=node)

    def stop(self) -> None:
        """Stop serving and wait until the port is closed."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def page_url(port: int, graph: ExplorerGraph, *, focus: str | None = None) -> str:
    """The URL that opens ``graph`` with every overlay listed (the first one applied), on the
    overview or, with ``focus`` (a node id), on the graph that holds that node, selected."""
    name = "".join(c if c.isalnum() else "_" for c in graph.graph_id)
    data: dict[str, object] = {"models": [{"url": f"graphs://{name}/0"}]}
    if graph.overlays:
        data["nodeData"] = [
            f"node_data://{o.name.replace('/', '_')}/{i}" for i, o in enumerate(graph.overlays)
        ]
        data["nodeDataTargets"] = ["" for _ in graph.overlays]
    if focus is not None:
        pane = {
            "deepestExpandedGroupNodeIds": [],
            "selectedNodeId": focus,
            "selectedGraphId": graph.graph_of.get(focus, graph.graph_id),
            "selectedCollectionLabel": "",
            "widthFraction": 1,
            "selected": True,
        }
        data["uiState"] = {"paneStates": [pane]}
    return f"http://{HOST}:{port}/?data={quote(json.dumps(data))}"


def serve_graph(graph: ExplorerGraph, *, port: int = 0, focus: str | None = None) -> ExplorerServer:
    """Serve ``graph`` and its overlays with Model Explorer's page on 127.0.0.1 (``port`` 0: a
    free one) in a background thread; :meth:`ExplorerServer.stop` stops it.  The URL opens on
    the node ``focus`` (default: the graph's own, :attr:`ExplorerGraph.focus`), see
    :func:`page_url`."""
    root = web_app_dir()
    if root is None:
        raise ReplayError(f"Model Explorer is not installed. {INSTALL}")
    app = _App(
        root.resolve(),
        graph_json(graph).encode(),
        tuple(o.text for o in graph.overlays),
    )
    try:
        server = _Server((HOST, port), _Handler)
    except OSError as e:
        raise ReplayError(f"Cannot listen on {HOST}:{port}: {e.strerror or e}.") from e
    server.app = app
    thread = threading.Thread(target=server.serve_forever, name="explorer-server", daemon=True)
    thread.start()
    bound = int(server.server_address[1])
    url = page_url(bound, graph, focus=focus or graph.focus)
    return ExplorerServer(url, HOST, bound, graph, server, thread)
