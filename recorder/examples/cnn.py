"""A small CNN with BatchNorm and dropout, trained on synthetic images; recorded with the recorder.

``python -m recorder.examples.cnn --steps 20 --out runs/cnn``

Images are made on the fly from a seeded generator: each of ``classes`` classes is a stripe
pattern of its own orientation and frequency, under noise and a random shift, so the model has
something to learn and the example needs no download.  The optimizer is Adam with a cosine
learning-rate schedule; BatchNorm's running statistics show up as buffers written every step.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from recorder.examples._common import Batch, example_main


class SmallCNN(nn.Module):
    """Two conv / BatchNorm / ReLU / max-pool stages, dropout, a linear classifier."""

    def __init__(
        self, channels: int = 3, classes: int = 10, width: int = 16, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3))  # global average pooling
        out: torch.Tensor = self.head(self.dropout(h))
        return out


class StripeImages:
    """Batches of ``(images, labels)``: class ``c`` is a stripe pattern of angle and frequency
    set by ``c``, with noise and a random phase."""

    def __init__(
        self,
        *,
        batch: int = 32,
        size: int = 32,
        channels: int = 3,
        classes: int = 10,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.batch, self.size, self.channels, self.classes = batch, size, channels, classes
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)
        ys, xs = torch.meshgrid(
            torch.arange(size, dtype=torch.float32),
            torch.arange(size, dtype=torch.float32),
            indexing="ij",
        )
        self.xs, self.ys = xs, ys

    def batch_at(self, step: int) -> Batch:
        labels = torch.randint(self.classes, (self.batch,), generator=self.gen)
        angle = labels.float() * math.pi / self.classes
        freq = 0.2 + 0.1 * (labels % 3).float()
        phase = torch.rand(self.batch, generator=self.gen) * 2 * math.pi
        proj = self.xs * torch.cos(angle)[:, None, None] + self.ys * torch.sin(angle)[:, None, None]
        img = torch.sin(proj * freq[:, None, None] + phase[:, None, None])
        img = img[:, None].expand(-1, self.channels, -1, -1).clone()
        img += 0.3 * torch.randn(img.shape, generator=self.gen)
        return img.to(self.device), labels.to(self.device)


def build(
    *,
    batch: int = 32,
    size: int = 32,
    width: int = 16,
    classes: int = 10,
    device: str | torch.device = "cpu",
    seed: int = 0,
    lr: float = 3e-3,
    steps: int = 100,
) -> tuple[SmallCNN, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, StripeImages]:
    """Model, Adam optimizer, cosine schedule and data of the example (also used by tests)."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    data = StripeImages(batch=batch, size=size, classes=classes, device=dev, seed=seed)
    model = SmallCNN(classes=classes, width=width).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    return model, optimizer, scheduler, data


def _loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--width", type=int, default=16, help="channels of the first conv")


def _make(args: argparse.Namespace, device: torch.device) -> tuple[object, ...]:
    model, optimizer, scheduler, data = build(
        batch=args.batch,
        size=args.size,
        width=args.width,
        device=device,
        seed=args.seed,
        steps=args.steps,
    )
    return model, optimizer, data.batch_at, _loss, scheduler


def main(argv: Sequence[str] | None = None) -> int:
    return example_main(
        "Train and record a small CNN (BatchNorm, dropout) on synthetic images.",
        _args,
        _make,
        name="cnn",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
