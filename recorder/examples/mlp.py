"""An MLP classifying synthetic points; recorded with the recorder.

``python -m recorder.examples.mlp --steps 20 --out runs/mlp``

The data are seeded Gaussian clusters in ``features`` dimensions, one per class, made on the fly.
The optimizer is SGD with momentum and a step learning-rate schedule, so the trace shows a
different optimizer (and its ``momentum_buffer`` state) from the GPT and CNN examples.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from recorder.examples._common import Batch, example_main


class MLP(nn.Module):
    """``layers`` hidden layers of ``hidden`` units with GELU and LayerNorm, then a classifier."""

    def __init__(self, features: int = 32, hidden: int = 128, layers: int = 2, classes: int = 8) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(x))
        return out


class Clusters:
    """Batches of points from one Gaussian cluster per class (fixed, seeded centres)."""

    def __init__(
        self,
        *,
        batch: int = 64,
        features: int = 32,
        classes: int = 8,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.centres = 2.0 * torch.randn(classes, features, generator=self.gen)
        self.batch, self.classes, self.device = batch, classes, torch.device(device)

    def batch_at(self, step: int) -> Batch:
        labels = torch.randint(self.classes, (self.batch,), generator=self.gen)
        x = self.centres[labels] + torch.randn(self.batch, self.centres.shape[1], generator=self.gen)
        return x.to(self.device), labels.to(self.device)


def build(
    *,
    batch: int = 64,
    features: int = 32,
    hidden: int = 128,
    layers: int = 2,
    classes: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    lr: float = 0.05,
) -> tuple[MLP, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, Clusters]:
    """Model, SGD-momentum optimizer, step schedule and data of the example."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    data = Clusters(batch=batch, features=features, classes=classes, device=dev, seed=seed)
    model = MLP(features, hidden, layers, classes).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
    return model, optimizer, scheduler, data


def _loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)


def _make(args: argparse.Namespace, device: torch.device) -> tuple[object, ...]:
    model, optimizer, scheduler, data = build(
        batch=args.batch, hidden=args.hidden, layers=args.layers, device=device, seed=args.seed
    )
    return model, optimizer, data.batch_at, _loss, scheduler


def main(argv: Sequence[str] | None = None) -> int:
    return example_main(
        "Train and record an MLP on synthetic clusters.", _args, _make, name="mlp", argv=argv
    )


if __name__ == "__main__":
    sys.exit(main())
