"""Record small models the built-in examples may not cover, for the replayer tests.

Run in a subprocess (it imports torch; the tests themselves never do)::

    python tests/replayer/_record_models.py convnet OUT_DIR

``convnet``: Conv2d + BatchNorm2d (training mode) + ReLU + MaxPool + Dropout + Linear, SGD with
momentum.  ``adamw_foreach``: an MLP trained by AdamW with ``foreach=True`` (``_foreach_*`` ops).
Both record two steps with every value.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.nn import functional as F

import recorder


def main(kind: str, out: str) -> None:
    torch.manual_seed(0)
    optimizer: torch.optim.Optimizer
    if kind == "convnet":
        model: nn.Module = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(16, 10),
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    elif kind == "adamw_foreach":
        model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 3))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        x, y = torch.randn(8, 20), torch.randint(0, 3, (8,))
    else:
        raise SystemExit(f"unknown model {kind!r}")
    with recorder.record(
        out, schedule=recorder.schedule(every=1), model=model, values="all", overwrite=True
    ) as rec:
        for _ in range(2):
            loss = F.cross_entropy(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rec.step(loss=loss)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
