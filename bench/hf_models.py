"""The models the recorder benchmarks train when they measure code nobody here wrote.

Used by ``bench/overhead_models.py`` and ``bench/profile_accuracy.py``; not a script.

- ``gpt2`` and ``llama``: Hugging Face ``GPT2LMHeadModel`` and ``LlamaForCausalLM`` (SDPA
  attention) from the tiny configs of FACTS.md "Recording models nobody here wrote", with random
  weights (nothing is downloaded); batches of 4 x 32 random token ids, the labels the inputs.
- ``facts``: the FACTS nanoGPT (``recorder.examples.gpt`` at 4 layers, d=256, batch 8 x 128).
- ``demo``: the same example at its default size, the model ``make demo`` records.

Every model trains with ``torch.optim.AdamW`` at its defaults (on CPU the per-parameter loop).
:func:`build` returns ``(model, optimizer, step)``; ``step(i)`` runs one training step on the
``i``-th batch (forward, backward, ``optimizer.step()``, ``zero_grad``) and returns the loss.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from recorder.examples.gpt import build as build_example

#: The models :func:`build` knows.
MODELS = ("gpt2", "llama", "facts", "demo")
#: Those that need transformers.
HF_MODELS = frozenset({"gpt2", "llama"})
#: ``recorder.examples.gpt.build`` sizes: bench/overhead.py's ``SIZES["facts"]``; the demo's are
#: the example's defaults.
EXAMPLE_SIZES: dict[str, dict[str, int]] = {
    "facts": {"layers": 4, "embd": 256, "heads": 4, "block": 128, "batch": 8},
    "demo": {},
}
BATCH, SEQ, VOCAB = 4, 32, 256
#: Distinct batches a step cycles through.
BATCHES = 8
INSTALL_HINT = "pip install -e '.[bench]'"


class Built(NamedTuple):
    """A model ready to train: ``step(i)`` trains on batch ``i`` and returns the loss."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[int], torch.Tensor]


def require_transformers(prog: str) -> str:
    """transformers' version; without it, a one-line message and exit status 2."""
    try:
        import transformers
    except ImportError:
        print(
            f"{prog}: the Hugging Face models need transformers, which is not installed: {INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)
    return str(transformers.__version__)


def _gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    # GPT-2's bos/eos (50256) lie outside a 256-token vocabulary.
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    model = GPT2LMHeadModel(config)
    # The class name does not say "ForCausalLM", so transformers would warn that it guesses.
    model.loss_type = "ForCausalLM"
    return model


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def _hf(model: torch.nn.Module, device: torch.device, seed: int) -> Built:
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen).to(device) for _ in range(BATCHES)]

    def step(i: int) -> torch.Tensor:
        ids = batches[i % len(batches)]
        loss: torch.Tensor = model(input_ids=ids, labels=ids).loss
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return Built(model, optimizer, step)


def _example(size: dict[str, int], device: torch.device, seed: int, fresh_batches: bool) -> Built:
    model, optimizer, data = build_example(seed=seed, device=device, **size)
    model.train()
    batches = [data.batch(i) for i in range(BATCHES)]

    def step(i: int) -> torch.Tensor:
        # The demo draws each batch inside the step (recorded with it), as the example does.
        x, y = data.batch(i) if fresh_batches else batches[i % len(batches)]
        loss = model(x, y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return Built(model, optimizer, step)


def build(name: str, *, device: str = "cpu", seed: int = 0) -> Built:
    """Model ``name`` (one of :data:`MODELS`) with its optimizer and training step, on ``device``.

    >>> model, optimizer, step = build("gpt2")
    >>> loss = step(0)
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose from {', '.join(MODELS)}.")
    dev = torch.device(device)
    torch.manual_seed(seed)
    if name in EXAMPLE_SIZES:
        return _example(EXAMPLE_SIZES[name], dev, seed, fresh_batches=name == "demo")
    makers: dict[str, Callable[[], Any]] = {"gpt2": _gpt2, "llama": _llama}
    return _hf(makers[name](), dev, seed)
