"""Align the ops of two steps whose graphs may differ.

An op's key is its phase, module path and op name, refined by the name of the first named tensor
it writes (a gradient, a parameter's next version) or, for ops at top level such as the
optimizer's, reads: so the update of one parameter aligns with the update of the same parameter
even where the two sides order them differently.  Two sides are aligned on their key
sequences; the n-th op with a key on one side meets the n-th on the other (its *occurrence*).

Cost: when the key sequences are equal (the common case: same code, same model) the alignment is
the identity, O(n).  Otherwise the common prefix and suffix are stripped in O(n) and the middle is
aligned with :class:`difflib.SequenceMatcher` (longest matching blocks, no junk heuristic).  Ops
left over in a gap where both sides ran something are aligned a second time on phase and op name
alone, which pairs ops of a module that was renamed or renumbered (``module`` structural change).

Example::

    al = align_ops(step_a.ops, step_b.ops)
    for a, b in zip(al.a, al.b):      # -1 where that side has no op at this position
        ...
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from tracefmt.model import OpNode, Phase, TensorRecord

__all__ = ["Alignment", "align_keys", "align_ops", "occurrences", "op_keys"]

OpKey = tuple[Phase, str, str]


@dataclass(frozen=True, slots=True)
class Alignment:
    """Two equally long index sequences in merged execution order; ``-1`` marks a missing op.

    ``a[i]`` and ``b[i]`` are the ops of A and B at position ``i``.  ``renamed`` holds positions
    matched by phase and op name only (their module paths differ); ``moved`` positions whose ops
    have the same key but ran in another order relative to their neighbours (B's index is out of
    order there).  ``identity`` is true when the key sequences were equal (then
    ``a == b == range(n)``).
    """

    a: tuple[int, ...]
    b: tuple[int, ...]
    renamed: frozenset[int]
    identity: bool
    moved: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.a)

    @property
    def matched(self) -> int:
        if self.identity:
            return len(self.a)
        return sum(1 for x, y in zip(self.a, self.b, strict=True) if x >= 0 and y >= 0)


def op_keys(ops: Sequence[OpNode], tensors: Sequence[TensorRecord] | None = None) -> list[OpKey]:
    """The alignment key of every op: ``(phase, context, name)``.

    The context is the module path, refined by the name of the first named tensor the op writes
    (a gradient, a parameter's new version) or, at top level, reads (optimizer state).
    """
    if tensors is None:
        return [(op.phase, op.module, op.name) for op in ops]
    names = [t.meta.name for t in tensors]
    keys: list[OpKey] = []
    append = keys.append
    for op in ops:
        module = op.module
        context = module
        for t in op.outputs:
            name = names[t]
            if name:
                context = f"{module}~{name}"
                break
        else:
            if not module:
                for t in op.inputs:
                    name = names[t]
                    if name:
                        context = "~" + name
                        break
        append((op.phase, context, op.name))
    return keys


def occurrences(keys: Sequence[Hashable]) -> list[int]:
    """For each position, how many earlier positions hold the same key."""
    seen: dict[Hashable, int] = {}
    out = []
    for k in keys:
        n = seen.get(k, 0)
        out.append(n)
        seen[k] = n + 1
    return out


def _codes(ka: Sequence[Hashable], kb: Sequence[Hashable]) -> tuple[list[int], list[int]]:
    table: dict[Hashable, int] = {}
    ca = [table.setdefault(k, len(table)) for k in ka]
    cb = [table.setdefault(k, len(table)) for k in kb]
    return ca, cb


def _match(ka: Sequence[Hashable], kb: Sequence[Hashable]) -> Sequence[tuple[str, int, int, int, int]]:
    """difflib opcodes for two key sequences (keys interned to ints first: faster hashing)."""
    ca, cb = _codes(ka, kb)
    return difflib.SequenceMatcher(None, ca, cb, autojunk=False).get_opcodes()


def align_ops(
    ops_a: Sequence[OpNode],
    ops_b: Sequence[OpNode],
    tensors_a: Sequence[TensorRecord] | None = None,
    tensors_b: Sequence[TensorRecord] | None = None,
) -> Alignment:
    """Align two op sequences (see the module docstring); tensors name the optimizer ops."""
    return align_keys(op_keys(ops_a, tensors_a), op_keys(ops_b, tensors_b), ops_a, ops_b)


def align_keys(
    ka: Sequence[OpKey], kb: Sequence[OpKey], ops_a: Sequence[OpNode], ops_b: Sequence[OpNode]
) -> Alignment:
    """Align two precomputed key sequences of ``ops_a`` and ``ops_b``."""
    if ka == kb:
        r = tuple(range(len(ka)))
        return Alignment(r, r, frozenset(), True)
    out_a, out_b, renamed = _lcs(ka, kb, ops_a, ops_b)
    return _pair_moved(out_a, out_b, renamed, ka, kb)


def _lcs(
    ka: Sequence[OpKey], kb: Sequence[OpKey], ops_a: Sequence[OpNode], ops_b: Sequence[OpNode]
) -> tuple[list[int], list[int], set[int]]:
    n_a, n_b = len(ka), len(kb)
    lo = 0
    top = min(n_a, n_b)
    while lo < top and ka[lo] == kb[lo]:
        lo += 1
    hi = 0
    while hi < top - lo and ka[n_a - 1 - hi] == kb[n_b - 1 - hi]:
        hi += 1
    out_a: list[int] = list(range(lo))
    out_b: list[int] = list(range(lo))
    renamed: set[int] = set()
    mid_a, mid_b = ka[lo : n_a - hi], kb[lo : n_b - hi]
    for tag, i1, i2, j1, j2 in _match(mid_a, mid_b):
        i1, i2, j1, j2 = i1 + lo, i2 + lo, j1 + lo, j2 + lo
        if tag == "equal":
            out_a.extend(range(i1, i2))
            out_b.extend(range(j1, j2))
        elif tag == "replace":
            _align_gap(ops_a, ops_b, i1, i2, j1, j2, out_a, out_b, renamed)
        else:
            _unmatched(i1, i2, j1, j2, out_a, out_b)
    out_a.extend(range(n_a - hi, n_a))
    out_b.extend(range(n_b - hi, n_b))
    return out_a, out_b, renamed


def _pair_moved(
    out_a: list[int], out_b: list[int], renamed: set[int], ka: Sequence[OpKey], kb: Sequence[OpKey]
) -> Alignment:
    """Pair ops left on one side only whose keys match an op left on the other: the same op,
    run in another order (gradient accumulation order, say).  The pair takes A's position."""
    lone_a: dict[OpKey, deque[int]] = {}
    for pos, (x, y) in enumerate(zip(out_a, out_b, strict=True)):
        if y < 0:
            lone_a.setdefault(ka[x], deque()).append(pos)
    drop: set[int] = set()
    moved: set[int] = set()
    if lone_a:
        for pos, (x, y) in enumerate(zip(out_a, out_b, strict=True)):
            if x < 0:
                queue = lone_a.get(kb[y])
                if queue:
                    p = queue.popleft()
                    out_b[p] = y
                    drop.add(pos)
                    moved.add(p)
    if not drop:
        return Alignment(tuple(out_a), tuple(out_b), frozenset(renamed), False)
    new_pos: list[int] = []
    kept = 0
    for pos in range(len(out_a)):
        new_pos.append(kept)
        if pos not in drop:
            kept += 1
    keep = [pos for pos in range(len(out_a)) if pos not in drop]
    return Alignment(
        tuple(out_a[p] for p in keep),
        tuple(out_b[p] for p in keep),
        frozenset(new_pos[p] for p in renamed),
        False,
        frozenset(new_pos[p] for p in moved),
    )


def _unmatched(i1: int, i2: int, j1: int, j2: int, out_a: list[int], out_b: list[int]) -> None:
    out_a.extend(range(i1, i2))
    out_b.extend([-1] * (i2 - i1))
    out_a.extend([-1] * (j2 - j1))
    out_b.extend(range(j1, j2))


def _shape_key(op: OpNode) -> tuple[int, str, int, int]:
    return (int(op.phase), op.name, len(op.inputs), len(op.outputs))


def _align_gap(
    ops_a: Sequence[OpNode],
    ops_b: Sequence[OpNode],
    i1: int,
    i2: int,
    j1: int,
    j2: int,
    out_a: list[int],
    out_b: list[int],
    renamed: set[int],
) -> None:
    """Second pass over a gap both sides ran something in: pair ops by phase and name only."""
    ka = [_shape_key(ops_a[i]) for i in range(i1, i2)]
    kb = [_shape_key(ops_b[j]) for j in range(j1, j2)]
    for tag, p1, p2, q1, q2 in _match(ka, kb):
        if tag == "equal":
            for k in range(p2 - p1):
                renamed.add(len(out_a))
                out_a.append(i1 + p1 + k)
                out_b.append(j1 + q1 + k)
        else:
            _unmatched(i1 + p1, i1 + p2, j1 + q1, j1 + q2, out_a, out_b)
