"""Record the GPT example with ``values="leaves"`` and measure, from torch, what its leaves weigh.

``python _record_leaves.py OUT ENGINE STEPS FILTER`` records STEPS steps of
``recorder.examples.gpt.build()`` into the run directory OUT and writes ``OUT/reference.json``:
per recorded step the bytes of the parameters and buffers, the optimizer state and the batch as
they enter the step, and of the outputs of random ops (counted by a dispatch mode of its own on
a twin of the model that runs the same steps beforehand; torch's ``nondeterministic_seeded`` tag
says which ops are random, not the recorder's list).  The batches are drawn before the steps, so
the batch is what enters them.  Run in a subprocess: the replayer's tests never import torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import recorder
from recorder.examples import gpt


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


class _RandomBytes(TorchDispatchMode):
    """Counts the bytes of the tensors random ops return or write."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if torch.Tag.nondeterministic_seeded in func.tags:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.total += _bytes(o for o in outs if isinstance(o, torch.Tensor))
        return out


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> Any:
    model.train()
    loss = model(batch[0], batch[1])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def main(out: str, engine: str, steps: int, values_filter: str) -> None:
    # The random draws' sizes, from a twin run of the same steps (build() seeds torch, so the
    # recorded run below draws the same); the twin's counting mode is the only one active.
    twin, twin_optimizer, twin_data = gpt.build()
    random_bytes = []
    for step in range(steps):
        batch = twin_data.batch(step)
        with _RandomBytes() as counter:
            _train_step(twin, twin_optimizer, batch)
        random_bytes.append(counter.total)
    model, optimizer, data = gpt.build()
    batches = [data.batch(step) for step in range(steps)]
    reference = []
    with recorder.record(
        out, model=model, values="leaves", engine=engine, overwrite=True, values_filter=values_filter
    ) as rec:
        for step, batch in enumerate(batches):
            tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
            reference.append(
                {
                    "parameters": _bytes(tensors.values()),
                    "optimizer_state": _bytes(_state_tensors(optimizer)),
                    "batch": _bytes(batch),
                    "random": random_bytes[step],
                }
            )
            loss = _train_step(model, optimizer, batch)
            rec.step(loss=loss)
    Path(out, "reference.json").write_text(json.dumps({"steps": reference}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
