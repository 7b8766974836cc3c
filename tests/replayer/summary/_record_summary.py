"""Record a tiny model with its module metadata, and write what torch says about its modules.

Run in a subprocess (it imports torch; the summary tests never do)::

    python tests/replayer/summary/_record_summary.py gpt OUT_DIR [python|native]
    python tests/replayer/summary/_record_summary.py hf_gpt2 OUT_DIR

``gpt``: the GPT example (:mod:`recorder.examples.gpt`) at a tiny size, two steps.  ``hf_gpt2``:
Hugging Face's ``GPT2LMHeadModel`` with a tiny random ``GPT2Config``, one step.  Next to the run
directory, ``OUT_DIR/expected.json`` holds, computed in torch while recording: every module of
``named_modules()`` in order with ``sum(p.numel() for p in m.parameters())``, the trainable count
and its class, the model's total, and the sizes a hand computation of multiply-adds needs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import recorder


def _expected(model: torch.nn.Module, **sizes: int) -> dict[str, object]:
    return {
        "modules": [
            {
                "path": path,
                "class": f"{type(m).__module__}.{type(m).__qualname__}",
                "params": sum(p.numel() for p in m.parameters()),
                "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad),
            }
            for path, m in model.named_modules()
        ],
        "total": sum(p.numel() for p in model.parameters()),
        "sizes": sizes,
    }


def gpt(out: Path, engine: str) -> dict[str, object]:
    from recorder.examples import gpt as example

    model, opt, data = example.build(layers=2, embd=32, heads=2, block=16, batch=4)
    model.wpe.weight.requires_grad_(False)  # a frozen parameter: trainable < total
    expected = _expected(
        model, batch=4, block=16, embd=32, heads=2, vocab=model.cfg.vocab_size, layers=2
    )
    native = engine == "native"
    with recorder.record(
        out / "run", model=model, overwrite=True, engine="native" if native else "python"
    ) as rec:
        for i in range(2):
            x, y = data.batch(i)
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    return expected


def hf_gpt2(out: Path) -> dict[str, object]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    expected = _expected(model, batch=2, block=8, embd=32, vocab=50)
    ids = torch.randint(0, 50, (2, 8))
    with recorder.record(out / "run", model=model, overwrite=True) as rec:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        rec.step(loss=loss)
    return expected


def main(kind: str, out: str, engine: str = "python") -> None:
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    expected = gpt(path, engine) if kind == "gpt" else hf_gpt2(path)
    (path / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(*sys.argv[1:])
