"""Record a tiny MLP for the analysis tests, in a subprocess (the tests never import torch)::

    python tests/tracefmt/analysis/_record_tiny.py OUT_DIR STEPS

Two linear layers trained by SGD with a learning rate that grows each step, so gradient and
parameter norms change from step to step (the tests look for the first step past a threshold).
Graph and statistics every step, with the Python engine (no C++ build for a test).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn import functional as F

import recorder


def main(out: str, steps: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    with recorder.record(
        out, schedule=recorder.schedule(every=1), model=model, engine="python", overwrite=True
    ) as rec:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = 0.05 * (step + 1)
            loss = F.cross_entropy(model(x * (1 + step)), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rec.step(loss=loss)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
