"""Model Explorer graph JSON of a recorded step: layers, nodes, edges, overlays, export, server.

No browser here (``test_explorer_browser.py`` opens the page).  The 100,000-op walk runs by
default since reading a step got faster: 9.7 s on 2 quiet cores (writing the step, reading it,
converting it and parsing its 85 MB of JSON).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tracefmt
from replayer.cli import main
from replayer.view.choice import NETRON_MAX_OPS, choose_viewer
from replayer.view.explorer import ExplorerGraph, export_step
from replayer.view.layers import LayerLimits, assign_namespaces, widest_layer
from replayer.view.webapp import missing, serve_graph
from tests.replayer.view._big import write_training_step

LIMIT = 400


def check_graph(graph: ExplorerGraph, ops: int) -> list[dict[str, Any]]:
    """Every op a node in exactly one graph of the collection, every edge's ends in its graph,
    every part node's subgraph present, no layer of any graph over :data:`LIMIT` children
    (counted from the JSON as Model Explorer builds its tree); the nodes of all graphs."""
    data = json.loads(graph.text)  # what the page gets
    graphs = data["graphs"]
    assert graphs[0]["id"] == graph.graph_id
    graph_ids = {g["id"] for g in graphs}
    assert len(graph_ids) == len(graphs)
    everything: list[dict[str, Any]] = []
    widest = 0
    for g in graphs:
        nodes = g["nodes"]
        ids = [n["id"] for n in nodes]
        assert len(ids) == len(set(ids))
        known = set(ids)
        for n in nodes:
            for e in n["incomingEdges"]:
                assert e["sourceNodeId"] in known, (g["id"], n["id"], e)
            assert set(n.get("subgraphIds", ())) <= graph_ids
            assert n["id"].startswith("x") or graph.graph_of[n["id"]] == g["id"]
        # Children of a layer: its nodes (ids are unique) and its distinct sub-layers.
        leaves = Counter(n["namespace"] for n in nodes)
        children: dict[str, set[str]] = {}
        for ns in leaves:
            parts = ns.split("/") if ns else []
            for depth in range(len(parts)):
                children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
        for ns in set(leaves) | set(children):
            widest = max(widest, leaves.get(ns, 0) + len(children.get(ns, ())))
        everything += nodes
    op_ids = [n["id"] for n in everything if n["id"].startswith("op")]
    assert len(op_ids) == len(set(op_ids)) == ops == graph.ops
    assert widest <= LIMIT
    assert graph.widest[1] == widest
    if len(graphs) > 1:  # the overview is small: a part node stands for each part
        assert len(graphs[0]["nodes"]) < len(everything) / 4
        parts = [n for n in graphs[0]["nodes"] if n.get("subgraphIds")]
        assert len(parts) == len(graphs) - 1
    return everything


def test_a_wide_layer_is_split_into_chunks_in_order() -> None:
    paths = [["optimizer"]] * 5000 + [["forward", "a"]]
    numbers = list(range(5001))
    namespaces = assign_namespaces(paths, numbers, LayerLimits(max_children=400, chunk=100))
    assert widest_layer(namespaces)[1] <= 400
    assert namespaces[0] == "optimizer/ops 0-99"
    assert namespaces[4999] == "optimizer/ops 4900-4999"
    assert namespaces[5000] == "forward/a"
    # 5,000 leaves in 50 chunks: one level suffices; 50,000 need chunks of chunks.
    deep = assign_namespaces([["x"]] * 50_000, list(range(50_000)), LayerLimits(400, 100))
    assert widest_layer(deep)[1] <= 400
    assert deep[0] == "x/ops 0-9999/ops 0-99"


def test_layer_limits_are_checked() -> None:
    with pytest.raises(tracefmt.TraceError, match="chunk"):
        LayerLimits(max_children=10, chunk=20)


@pytest.fixture(scope="module")
def gpt(record_trace: Callable[[str], Path]) -> ExplorerGraph:
    with tracefmt.open(record_trace("gpt")) as t:
        return export_step(t, 1)


def test_gpt_step_graph(gpt: ExplorerGraph) -> None:
    nodes = check_graph(gpt, gpt.ops)
    assert set(gpt.phases) >= {"forward", "backward", "optimizer"}
    by_id = {n["id"]: n for n in nodes}
    mm = next(n for n in nodes if n["namespace"].startswith("forward/h/0/attn/c_attn"))
    attrs = {a["key"]: a["value"] for a in mm["attrs"]}
    assert attrs["aten"].startswith("aten::")
    assert attrs["module"] == "h.0.attn.c_attn"
    assert mm["outputsMetadata"][0]["attrs"][1]["key"] == "tensor_shape"
    # The optimizer's per-parameter ops sit under their parameter's path.
    optimizer = Counter(n["namespace"] for n in nodes if n["namespace"].startswith("optimizer"))
    assert "optimizer/wte/weight" in optimizer
    assert "optimizer" not in optimizer or optimizer["optimizer"] < 10
    # Parameters are input nodes read by their op.
    param = next(n for n in nodes if n["id"].startswith("t") and n["label"] == "wte.weight")
    readers = [n for n in nodes for e in n["incomingEdges"] if e["sourceNodeId"] == param["id"]]
    assert readers
    assert by_id[readers[0]["id"]]["label"] == "embedding"
    keys = {o.key for o in gpt.overlays}
    assert {"norm", "max_abs", "nonfinite", "host_time", "memory"} <= keys


def test_synthetic_10k_step(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("big") / "10k.tft.h5"
    ops = write_training_step(path, 10_000)
    with tracefmt.open(path) as t:
        graph = export_step(t, 0)
    check_graph(graph, ops)


def test_synthetic_100k_step(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("big") / "100k.tft.h5"
    ops = write_training_step(path, 100_000)
    assert ops >= 99_000
    with tracefmt.open(path) as t:
        graph = export_step(t, 0)
    check_graph(graph, ops)


def test_export_command_writes_the_graph_and_overlays(
    record_trace: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "step.json"
    trace = str(record_trace("gpt"))
    args = ["export", trace, "--step", "1", "--format", "explorer", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "model-explorer" in result.output
    assert "--host=127.0.0.1" in result.output
    data = json.loads(out.read_text())
    (graph,) = data["graphs"]
    norm = json.loads((tmp_path / "step.norm.json").read_text())
    assert set(norm) == {graph["id"]}
    ids = {n["id"] for n in graph["nodes"]}
    assert set(norm[graph["id"]]["results"]) <= ids
    bad = CliRunner().invoke(main, [*args, "--depth", "2"])
    assert bad.exit_code == 2


def test_auto_chooses_netron_for_small_steps_and_says_why() -> None:
    small = choose_viewer("auto", 680)
    assert small.viewer == "netron"
    assert "680 ops" in small.reason
    big = choose_viewer("auto", NETRON_MAX_OPS + 1)
    if missing() is None:
        assert big.viewer == "explorer"
        assert "Model Explorer" in big.reason
    else:
        assert big.viewer == "netron"
        assert "not installed" in big.reason
    assert choose_viewer("netron", 10**6).viewer == "netron"
    assert choose_viewer("netron", 5).viewer == "netron"


@pytest.fixture
def server(gpt: ExplorerGraph) -> Iterator[Any]:
    why = missing()
    if why is not None:
        pytest.skip(why)
    served = serve_graph(gpt)
    yield served
    served.stop()


def test_server_serves_the_graph_and_no_local_files(server: Any) -> None:
    base = f"http://127.0.0.1:{server.port}"
    assert server.url.startswith(base + "/?data=")
    graph = json.load(urllib.request.urlopen(base + "/api/v1/load_graphs_json?graph_index=0"))
    assert graph["graphs"][0]["id"] == server.graph.graph_id
    data = json.load(urllib.request.urlopen(base + "/api/v1/load_node_data?node_data_index=0"))
    assert server.graph.graph_id in json.loads(data["content"])
    assert b"<html" in urllib.request.urlopen(base + "/").read().lower()
    for path in ("/api/v1/read_text_file?path=/etc/passwd", "/../../../../etc/passwd", "/%2e%2e/x"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path)
        assert e.value.code == 404
    # a page whose DNS name was rebound to 127.0.0.1 sends its own name as Host
    rebound = urllib.request.Request(base + "/api/v1/load_graphs_json", headers={"Host": "evil.test"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(rebound)
    assert e.value.code == 403


def _other_address() -> str | None:
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = None
    if address is None or address.startswith("127."):
        try:  # the address a UDP socket would send from (no packet is sent)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("192.0.2.1", 9))
                address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_server_listens_on_loopback_only(server: Any) -> None:
    assert server.host == "127.0.0.1"
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no address but loopback to try")
    with socket.socket() as s:
        s.settimeout(5)
        assert s.connect_ex((other, server.port)) != 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass


def test_arguments_equal_in_python_keep_their_own_text() -> None:
    # 1, 1.0 and True are equal dict keys; -0.0 equals 0.0: the encoder's cache must not mix them.
    from replayer.view.nodes import Encoder

    enc = Encoder(())
    shown = [json.loads(enc.arg("x", v))["value"] for v in (1, 1.0, True, 0.0, -0.0, [1, 2])]
    assert shown == ["1", "1.0", "true", "0.0", "-0.0", "[1, 2]"]
    assert json.loads(enc.arg("x", 1))["value"] == "1"  # from the cache
