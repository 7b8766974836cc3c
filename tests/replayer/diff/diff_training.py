"""Small deterministic training runs recorded with the recorder, as material for diff tests.

``record_mlp`` trains an MLP with dropout in its first layer (AdamW, CPU, one thread) and records
every step; its keywords make the variants the diff tests compare: another dropout seed, bf16
autocast, one inserted layer, one parameter nudged by one ULP before a step, values or
statistics only.  ``record_gpt`` records the built-in GPT example at a tiny size.  Everything
else (data, initial weights) is the same for the same ``seed``.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import recorder

IN, WIDTH, OUT, BATCH = 12, 24, 5, 8


class Layer(nn.Module):
    """Linear, ReLU and (optionally) dropout: ``fc``, ``act``, ``drop``."""

    def __init__(self, n_in: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.act(self.fc(x)))
        return out


class Net(nn.Module):
    """``l0`` (with dropout), ``l1``, optionally ``extra`` after ``l1``, then ``head``."""

    def __init__(self, extra_layer: bool = False) -> None:
        super().__init__()
        self.l0 = Layer(IN, WIDTH, 0.2)
        self.l1 = Layer(WIDTH, WIDTH, 0.0)
        self.head = nn.Linear(WIDTH, OUT)
        if extra_layer:  # built last, so the other layers' initial weights stay the same
            self.extra = Layer(WIDTH, WIDTH, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l1(self.l0(x))
        if hasattr(self, "extra"):
            x = self.extra(x)
        out: torch.Tensor = self.head(x)
        return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def nudge_one_ulp(param: torch.Tensor) -> None:
    """Add one ULP to the first element of a float32 tensor without running any torch op (so a
    recorder sees nothing): the bits are changed through the data pointer."""
    if param.dtype != torch.float32 or not param.is_contiguous():
        raise ValueError("nudge_one_ulp wants a contiguous float32 tensor")
    word = ctypes.c_int32.from_address(param.data_ptr())
    word.value += 1 if word.value >= 0 else -1


def record_mlp(
    out: Path,
    *,
    steps: int = 4,
    seed: int = 0,
    dropout_seed: int | None = None,
    values: bool = False,
    stats: bool = True,
    autocast: bool = False,
    extra_layer: bool = False,
    perturb: tuple[int, str] | None = None,
) -> Path:
    """Train and record ``steps`` steps of :class:`Net` into the run directory ``out``."""
    with _one_thread():
        torch.manual_seed(seed)
        model = Net(extra_layer)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.manual_seed(seed if dropout_seed is None else dropout_seed)
        data = torch.Generator().manual_seed(seed + 1000)
        capture = ("graph", "stats") if stats else ("graph",)
        with recorder.record(out, model=model, capture=capture, values="all" if values else None) as rec:
            for step in range(steps):
                if perturb is not None and perturb[0] == step:
                    nudge_one_ulp(dict(model.named_parameters())[perturb[1]])
                x = torch.randn(BATCH, IN, generator=data)
                y = torch.randn(BATCH, OUT, generator=data)
                if autocast:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        pred = model(x)
                    pred = pred.float()
                else:
                    pred = model(x)
                loss = F.mse_loss(pred, y)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                rec.step(loss=loss)
    return out


def record_gpt(
    out: Path, *, steps: int = 3, seed: int = 0, dropout_seed: int | None = None, values: bool = False
) -> Path:
    """Record the built-in GPT example (one tiny layer) the way its training loop runs it;
    ``dropout_seed`` reseeds torch after the model is built (its data has its own generator)."""
    from recorder.examples.gpt import build

    with _one_thread():
        model, optimizer, data = build(layers=1, embd=32, heads=2, block=16, batch=4, seed=seed)
        if dropout_seed is not None:
            torch.manual_seed(dropout_seed)
        with recorder.record(out, model=model, values="all" if values else None) as rec:
            for step in range(steps):
                x, y = data.batch(step)
                model.train()
                loss = model(x, y)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                rec.step(loss=loss)
    return out
