"""Graph helpers of the diff: comparable attributes, the loss tensor, chains of ops.

Pure functions of recorded ops and tensors (no diff state), so the view and other tools can use
them too.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from tracefmt.model import OpNode, Phase, TensorRecord
from tracefmt.reader import Step

__all__ = ["attrs_differ", "chain_to", "find_loss"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _normalise(value: Any) -> Any:
    """Attribute values with object addresses (``<Generator at 0x7f..>``) made comparable."""
    if isinstance(value, str):
        return _ADDRESS.sub(" at 0x?", value)
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def attrs_differ(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of the attributes whose values differ (object addresses ignored)."""
    if a == b:
        return []
    return [k for k in sorted(set(a) | set(b)) if _normalise(a.get(k)) != _normalise(b.get(k))]


def find_loss(step: Step) -> int | None:
    """The loss tensor: what the backward pass was seeded from (``ones_like(loss)``), else the
    last one-element output of the forward pass."""
    for op in step.ops:
        if op.phase is Phase.BACKWARD:
            if op.name.startswith("aten::ones_like") and op.inputs:
                return op.inputs[0]
            break
    for op in reversed(step.ops):
        if op.phase is Phase.FORWARD:
            for t in reversed(op.outputs):
                if math.prod(step.tensors[t].meta.shape) == 1:
                    return t
    return None


def chain_to(
    ops: Sequence[OpNode], tensors: Sequence[TensorRecord], start: int, loss: int, diverged: set[int]
) -> tuple[list[int], bool]:
    """Op indices from ``start`` to the op producing ``loss`` along producer/consumer links.

    The shortest path through diverged tensors where one exists (second result true), else the
    shortest data path at all (false), else ``[]``.
    """
    target = tensors[loss].meta.producer
    if target is None or target < start:
        return [], False
    consumers: dict[int, list[int]] = {}
    for k in range(start + 1, target + 1):
        for t in ops[k].inputs:
            consumers.setdefault(t, []).append(k)
    for restrict in (True, False):
        parent = {start: start}
        queue = deque([start])
        while queue:
            k = queue.popleft()
            if k == target:
                path = [k]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1], restrict
            for t in ops[k].outputs:
                if restrict and t not in diverged:
                    continue
                for c in consumers.get(t, ()):
                    if c not in parent:
                        parent[c] = k
                        queue.append(c)
    return [], False
