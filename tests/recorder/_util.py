"""Helpers for the recorder tests: an in-memory sink and an independent op log."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tracefmt.records import StepRecord


class ListSink:
    """Keeps step records in memory (what a flight recorder would do)."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.flushes = 0
        self.closed = False

    def write_step(self, record: StepRecord) -> None:
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


class OpLog(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """An independent log of aten ops: name, tensor inputs and outputs (strong references)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ops: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.namespace == "aten":
            flat_in = [
                a
                for a in torch.utils._pytree.tree_leaves((args, kwargs or {}))
                if isinstance(a, torch.Tensor)
            ]
            flat_out = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
            self.ops.append((f"{func._schema.name}.{func._overloadname}", flat_in, flat_out))
        return out


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
