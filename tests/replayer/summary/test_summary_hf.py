"""``replayer summary`` on a Hugging Face model: a tiny random ``GPT2LMHeadModel`` (one layer,
width 32), whose projections are ``transformers``' ``Conv1D`` (an ``addmm``) and whose head is a
``Linear`` tied to the token embedding.  Marked slow: importing transformers and recording
takes about 20 s on 2 shared cores (``make slow`` runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replayer.summary import summarize
from tests.replayer.summary.conftest import record

Run = tuple[Path, dict[str, Any]]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return record("hf_gpt2", tmp_path_factory.mktemp("hf"), needs="transformers")


def test_hf_gpt2_modules_classes_and_counts(hf_run: Run) -> None:
    run, expected = hf_run
    result = summarize(run)
    got = [(m.path, m.class_name, m.params, m.trainable) for m in result.modules]
    assert got == [(m["path"], m["class"], m["params"], m["trainable"]) for m in expected["modules"]]
    assert result.totals.params == expected["total"]
    classes = {m.path: m.class_name for m in result.modules}
    assert classes["transformer.h.0.attn"] == "transformers.models.gpt2.modeling_gpt2.GPT2Attention"
    assert classes["transformer.h.0.attn.c_attn"] == "transformers.pytorch_utils.Conv1D"


def test_hf_gpt2_projection_mult_adds(hf_run: Run) -> None:
    run, expected = hf_run
    s = expected["sizes"]
    tokens, c = s["batch"] * s["block"], s["embd"]
    rows = {m.path: m for m in summarize(run).modules}
    for path, n_out in (
        ("attn.c_attn", 3 * c),
        ("attn.c_proj", c),
        ("mlp.c_fc", 4 * c),
        ("mlp.c_proj", c),
    ):
        n_in = 4 * c if path == "mlp.c_proj" else c
        assert rows[f"transformer.h.0.{path}"].mult_adds == tokens * n_in * n_out, path
    assert rows["lm_head"].mult_adds == tokens * c * s["vocab"]
