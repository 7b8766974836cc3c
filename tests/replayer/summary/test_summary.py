"""``replayer summary`` on the GPT example: every module with the parameter counts torch gave
when recording, the totals, and the multiply-adds of the linear layers by hand; the table, JSON
and options of the command; and a trace without module metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import Result

import tracefmt
from replayer.summary import summarize, summarize_step
from tests.replayer.summary.conftest import ROOT
from tests.synth import mlp_graph, synthetic_step
from tests.tracefmt.modulefiles import mlp_modules
from tracefmt import TraceWriter
from tracefmt.moduletable import ModuleTable, parent_path

Run = tuple[Path, dict[str, Any]]


def test_every_module_has_the_parameter_counts_torch_gave(gpt_run: Run) -> None:
    run, expected = gpt_run
    result = summarize(run)
    assert result.has_metadata
    assert result.step == 0  # the first full step
    got = [(m.path, m.class_name, m.params, m.trainable) for m in result.modules]
    want = [(m["path"], m["class"], m["params"], m["trainable"]) for m in expected["modules"]]
    assert got == want
    assert result.totals.params == expected["total"]
    frozen = 16 * 32  # wpe: block x embd, frozen when recording
    assert result.totals.trainable == expected["total"] - frozen
    assert result.totals.param_bytes == 4 * expected["total"]  # float32


def test_linear_mult_adds_match_a_hand_computation(gpt_run: Run) -> None:
    run, expected = gpt_run
    s = expected["sizes"]
    tokens, c, vocab = s["batch"] * s["block"], s["embd"], s["vocab"]
    by_path = {m.path: m for m in summarize(run, step=1).modules}
    linears = {  # (in, out) features of every Linear of the model
        "lm_head": (c, vocab),
        **{f"h.{i}.attn.c_attn": (c, 3 * c) for i in range(s["layers"])},
        **{f"h.{i}.attn.c_proj": (c, c) for i in range(s["layers"])},
        **{f"h.{i}.mlp.c_fc": (c, 4 * c) for i in range(s["layers"])},
        **{f"h.{i}.mlp.c_proj": (4 * c, c) for i in range(s["layers"])},
    }
    assert {p for p, m in by_path.items() if m.class_name == "torch.nn.modules.linear.Linear"} == set(
        linears
    )
    for path, (n_in, n_out) in linears.items():
        assert by_path[path].mult_adds == tokens * n_in * n_out, path
        assert by_path[path].output_shape == (s["batch"], s["block"], n_out), path
    # attention: q @ k^T and p @ v over every head, dense (the causal mask hides half)
    attention = 2 * s["batch"] * s["block"] * s["block"] * c
    block = tokens * c * (3 * c + c + 4 * c + 4 * c) + attention
    assert by_path["h.0.attn"].mult_adds == tokens * c * 4 * c + attention
    assert by_path["h.0"].mult_adds == block
    assert by_path[""].mult_adds == s["layers"] * block + tokens * c * vocab
    assert by_path["h.0.ln_1"].mult_adds == 0


def test_rollups_add_up_over_the_tree(gpt_run: Run) -> None:
    run, _ = gpt_run
    result = summarize(run, step=1)
    rows = {m.path: m for m in result.modules}
    for m in result.modules:
        children = [c for c in result.modules if c.path and parent_path(c.path) == m.path]
        if not children:
            continue
        assert m.ops >= sum(c.ops for c in children)
        assert m.activation_bytes >= sum(c.activation_bytes for c in children)
        assert (m.forward_ns or 0) >= sum(c.forward_ns or 0 for c in children)
    assert rows[""].forward_ns == result.totals.forward_ns
    assert result.totals.forward_ns
    assert result.totals.backward_ns
    assert result.totals.optimizer_ns
    assert rows["h.0.mlp.c_fc"].forward_ns
    assert rows["h.0.mlp.c_fc"].backward_ns
    # activations: each Linear's output is new float32 storage of (tokens, out)
    assert rows["h.0.mlp.c_fc"].activation_bytes == 4 * 64 * 128


def test_table_shows_classes_counts_and_totals(gpt_run: Run, invoke: Callable[..., Result]) -> None:
    run, expected = gpt_run
    out = invoke(str(run), "--step", "1")
    assert out.exit_code == 0, out.output
    assert "c_attn: Linear" in out.output
    assert "attn: CausalSelfAttention" in out.output
    assert f"Total params: {expected['total']:,}" in out.output
    assert "Non-trainable params: 512" in out.output
    assert "Note:" not in out.output  # nothing missing


def test_json_and_depth(gpt_run: Run, invoke: Callable[..., Result]) -> None:
    run, expected = gpt_run
    out = invoke(str(run), "--json", "--depth", "1")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["module_metadata"] is True
    assert [m["path"] for m in data["modules"]] == [
        m["path"] for m in expected["modules"] if m["path"].count(".") == 0
    ]
    assert data["totals"]["params"] == expected["total"]
    assert data["totals"]["total_bytes"] == (
        data["totals"]["input_bytes"]
        + data["totals"]["activation_bytes"]
        + data["totals"]["param_bytes"]
    )
    shallow = invoke(str(run), "--depth", "0")
    assert "(model): GPT" in shallow.output
    assert "wte" not in shallow.output


def test_a_step_or_rank_that_is_not_there_is_one_error_line(
    gpt_run: Run, invoke: Callable[..., Result]
) -> None:
    run, _ = gpt_run
    for args, message in ((("--step", "7"), "Step 7 is not in"), (("--rank", "3"), "Rank 3")):
        out = invoke(str(run), *args)
        assert out.exit_code == 2
        assert out.output.startswith("error: ")
        assert message in out.output


def test_a_trace_without_module_metadata_still_gets_its_table(
    tmp_path: Path, invoke: Callable[..., Result]
) -> None:
    path = tmp_path / "plain.tft.h5"
    with TraceWriter(path, fsync=False) as w:
        w.write_step(synthetic_step(0, mlp_graph(), np.random.default_rng(0), with_values=False))
    result = summarize(path)
    assert not result.has_metadata
    rows = {m.path: m for m in result.modules}
    assert list(rows) == ["", "layers", "layers.0", "layers.0.act", "layers.1", "layers.1.act"]
    assert {p: (m.params, m.class_name, m.trainable) for p, m in rows.items()} == {
        "": (512, None, None),
        "layers": (512, None, None),
        "layers.0": (256, None, None),
        "layers.0.act": (0, None, None),
        "layers.1": (256, None, None),
        "layers.1.act": (0, None, None),
    }
    assert rows["layers.0"].mult_adds == 8 * 16 * 16  # mm of (8, 16) by (16, 16)
    assert rows["layers.0"].output_shape == (8, 16)  # its relu's output: the last op inside
    assert result.totals.param_bytes == 2 * 512  # bfloat16
    out = invoke(str(path))
    assert out.exit_code == 0
    assert "no module metadata" in out.output


def test_summary_needs_no_torch(gpt_run: Run) -> None:
    run, expected = gpt_run
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from replayer.summary import summarize\n"
        f"print(summarize({str(run)!r}).totals.params)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == expected["total"]


def test_summarize_step_takes_a_loaded_step(gpt_run: Run) -> None:
    run, _ = gpt_run
    with tracefmt.open(run) as trace:
        step = trace.step(1)
        with_table = summarize_step(step, trace.modules(1))
        without = summarize_step(step, None)
    assert with_table.totals.mult_adds == without.totals.mult_adds
    assert [m.path for m in without.modules] == [m.path for m in with_table.modules]
    # from the graph, the head's weight is the embedding's (tied): it counts under its first name
    assert without.totals.params == with_table.totals.params
    assert {m.path: m.params for m in without.modules}["lm_head"] == 0


def test_modules_the_metadata_lacks_are_shown_without_counts(tmp_path: Path) -> None:
    """The ops of a module outside the model given to the recorder still roll up; the module has
    no class or parameters, and a note says so."""
    full = mlp_modules()
    path = tmp_path / "partial.tft.h5"
    record = synthetic_step(0, mlp_graph(), np.random.default_rng(0), with_values=False)
    record.modules = ModuleTable(tuple(m for m in full if not m.path.startswith("layers.1")))
    with TraceWriter(path, fsync=False) as w:
        w.write_step(record)
    result = summarize(path)
    rows = {m.path: m for m in result.modules}
    assert list(rows) == ["", "layers", "layers.0", "layers.0.act", "layers.1", "layers.1.act"]
    assert (rows["layers.1"].listed, rows["layers.1"].params, rows["layers.1"].class_name) == (
        False,
        None,
        None,
    )
    assert rows["layers.1"].mult_adds == 8 * 16 * 16
    assert rows["layers.0"].class_name == "torch.nn.modules.linear.Linear"
    assert result.totals.params == full.total_params
    assert any("not in the module metadata" in note for note in result.notes)
