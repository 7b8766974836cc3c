"""Match one step's collectives across the ranks of each process group.

Each rank's collectives of a group are taken in sequence order (``seq``).  When every rank of the
group issued the same sequence (the common case) they match position by position.  When they do
not, the sequences are aligned (``difflib``, on the op's type, sizes, dtypes, reduce op, root and
module, then on the type alone) against the reference: the sequence most ranks share (the lowest
rank's on a tie).  An op only the reference has was skipped by the other rank; one only the other
rank has is an extra.  Matched ops are then compared field by field, each field against the value
most ranks hold.

Point-to-point ops match in pairs: the n-th send from rank a to rank b with the n-th receive on b
from a.
"""

from __future__ import annotations

import difflib
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from replayer.ranks.digest import CollectiveRow
from replayer.ranks.findings import Mismatch

#: Collective types whose per-rank contribution (``sent``) and result (``written``) have the same
#: size on every rank; gather and scatter only on the side that is not the root's.
_SIZE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "gather": ("sent",),
    "scatter": ("written",),
    "all_to_all": (),
}


@dataclass(frozen=True, slots=True)
class Column:
    """One collective as matched across the ranks that issued it (rank -> row)."""

    rows: Mapping[int, CollectiveRow]
    reference: CollectiveRow


@dataclass(frozen=True, slots=True)
class GroupMatch:
    """The outcome for one group in one step."""

    columns: tuple[Column, ...]
    mismatches: tuple[Mismatch, ...]
    matched: int


def _full(r: CollectiveRow) -> Hashable:
    return (r.type, r.sent, r.written, r.dtypes, r.reduce_op, r.root, r.module)


def _coarse(r: CollectiveRow) -> Hashable:
    return r.type


def _label(r: CollectiveRow) -> str:
    return f"{r.op} (seq {r.seq}, module {r.module or '<top>'!r})"


def _ranks_text(ranks: Sequence[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if len(ranks) > 4:
        return f"ranks {', '.join(map(str, ranks[:3]))}, ... ({len(ranks)} ranks)"
    return "ranks " + ", ".join(map(str, ranks))


def _mismatch(
    kind: str,
    step: int,
    group: str,
    ranks: tuple[int, ...],
    x: CollectiveRow,
    values: tuple[tuple[int, str], ...],
    message: str,
) -> Mismatch:
    """A mismatch of ``kind`` about op ``x`` (its name, module and seq)."""
    return Mismatch(
        kind=kind,
        step=step,
        group=group,
        ranks=ranks,
        op=x.op,
        module=x.module,
        seq=x.seq,
        values=values,
        message=message,
    )


def _align(
    ref: Sequence[CollectiveRow],
    other: Sequence[CollectiveRow],
    key: Callable[[CollectiveRow], Hashable],
    pairs: list[tuple[CollectiveRow, CollectiveRow]],
    only_ref: list[CollectiveRow],
    only_other: list[CollectiveRow],
) -> None:
    sm = difflib.SequenceMatcher(None, [key(r) for r in ref], [key(r) for r in other], autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        a, b = ref[i1:i2], other[j1:j2]
        if tag == "equal" or (tag == "replace" and len(a) == len(b)):
            pairs.extend(zip(a, b, strict=True))
        elif tag == "replace" and key is _full:
            _align(a, b, _coarse, pairs, only_ref, only_other)
        else:
            pairs.extend(zip(a, b, strict=False))
            only_ref.extend(a[len(b) :])
            only_other.extend(b[len(a) :])


def match_group(
    step: int, group: str, by_rank: Mapping[int, Sequence[CollectiveRow]], members: Sequence[int]
) -> GroupMatch:
    """Match the collectives (kind ``collective``) of ``group`` in ``step``.

    ``by_rank`` holds, for each member rank with data for the step, its rows of the group in
    sequence order (an empty list: the rank issued none).  ``members`` are those ranks.
    """
    sequences = {r: tuple(by_rank.get(r, ())) for r in members}
    signatures = {r: tuple(_full(x) for x in rows) for r, rows in sequences.items()}
    counts = Counter(signatures.values())
    ref_rank = min(members, key=lambda r: (-counts[signatures[r]], r))
    ref = sequences[ref_rank]
    columns: list[dict[int, CollectiveRow]] = [{ref_rank: row} for row in ref]
    position = {id(row): k for k, row in enumerate(ref)}
    mismatches: list[Mismatch] = []
    like_ref = [r for r in members if signatures[r] == signatures[ref_rank]]
    for r in members:
        if r == ref_rank:
            continue
        if signatures[r] == signatures[ref_rank]:
            for k, row in enumerate(sequences[r]):
                columns[k][r] = row
            continue
        pairs: list[tuple[CollectiveRow, CollectiveRow]] = []
        only_ref: list[CollectiveRow] = []
        only_other: list[CollectiveRow] = []
        _align(ref, sequences[r], _full, pairs, only_ref, only_other)
        for a, b in pairs:
            columns[position[id(a)]][r] = b
        for x in only_other:
            mismatches.append(
                _mismatch(
                    "extra",
                    step,
                    group,
                    (r,),
                    x,
                    ((r, x.type),),
                    f"step {step}: rank {r} issued {_label(x)}, which "
                    f"{_ranks_text(like_ref)} did not issue in group {group!r}.",
                )
            )
    matched = 0
    for k, col in enumerate(columns):
        reference = ref[k]
        skipped = [r for r in members if r not in col]
        if skipped:
            issued = sorted(col)
            mismatches.append(
                _mismatch(
                    "missing",
                    step,
                    group,
                    tuple(skipped),
                    reference,
                    tuple((r, "issued" if r in col else "skipped") for r in members),
                    f"step {step}: {_ranks_text(skipped)} skipped {_label(reference)} "
                    f"in group {group!r}, which {_ranks_text(issued)} issued.",
                )
            )
        else:
            matched += 1
        mismatches.extend(_compare(step, group, col, reference))
    mismatches.sort(key=lambda m: (m.seq if m.seq is not None else -1, m.kind))
    return GroupMatch(
        tuple(Column(col, ref[k]) for k, col in enumerate(columns)), tuple(mismatches), matched
    )


def _fields(row: CollectiveRow) -> dict[str, tuple[str, str]]:
    """Field -> (mismatch kind, value as text) of what must agree across ranks."""
    out = {
        "type": ("type", row.type),
        "dtype": ("dtype", "/".join(row.dtypes)),
        "reduce_op": ("reduce_op", str(row.reduce_op)),
        "root": ("root", str(row.root)),
    }
    for f in _SIZE_FIELDS.get(row.type, ("sent", "written")):
        out[f] = ("size", f"{getattr(row, f)} elements {'sent' if f == 'sent' else 'received'}")
    return out


def _compare(
    step: int, group: str, col: Mapping[int, CollectiveRow], reference: CollectiveRow
) -> list[Mismatch]:
    out: list[Mismatch] = []
    for r, row in sorted(col.items()):
        size = _size_relation(row)
        if size:
            out.append(
                _mismatch(
                    "size",
                    step,
                    group,
                    (r,),
                    row,
                    ((r, size),),
                    f"step {step}: rank {r}'s {_label(row)} in group {group!r}: {size}.",
                )
            )
    if len(col) < 2:
        return out
    per_rank = {r: _fields(row) for r, row in col.items()}
    seen_kinds: set[str] = set()
    for field in per_rank[min(col)]:
        values = {r: f[field][1] for r, f in per_rank.items() if field in f}
        common = Counter(values.values()).most_common()
        if len(common) < 2:
            continue
        top = common[0][1]
        ties = {v for v, n in common if n == top}
        reference_value = values.get(reference.rank)
        ref_value = reference_value if reference_value in ties else sorted(ties)[0]
        odd = sorted(r for r, v in values.items() if v != ref_value)
        kind = per_rank[odd[0]][field][0]
        if kind in seen_kinds and kind == "size":
            continue  # sent and received sizes both differ: one finding
        seen_kinds.add(kind)
        row = col[odd[0]]
        same = sorted(r for r, v in values.items() if v == ref_value)
        detail = "; ".join(f"rank {r}: {values[r]}" for r in odd[:4])
        out.append(
            _mismatch(
                kind,
                step,
                group,
                tuple(odd),
                row,
                tuple(sorted(values.items())),
                f"step {step}: {kind.replace('_', ' ')} of {_label(row)} in group "
                f"{group!r} differs: {detail}, where {_ranks_text(same[:4])} "
                f"{'has' if len(same) == 1 else 'have'} {ref_value}.",
            )
        )
    return out


def _size_relation(row: CollectiveRow) -> str | None:
    """Whether one rank's all-gather (reduce-scatter) has an output group-size times its input
    (the inverse); ``None`` when it does or when a side was not recorded."""
    n = len(row.group_ranks)
    if not row.sent or not row.written or n < 1:
        return None
    if row.type == "all_gather" and row.written != row.sent * n:
        return f"it receives {row.written} elements for {row.sent} sent x group size {n}"
    if row.type == "reduce_scatter" and row.sent != row.written * n:
        return f"it sends {row.sent} elements for {row.written} received x group size {n}"
    return None


def match_p2p(step: int, group: str, by_rank: Mapping[int, Sequence[CollectiveRow]]) -> list[Mismatch]:
    """Pair each send with the receive its peer posted (n-th send a->b with n-th receive on b
    from a); report the unpaired ones whose peer has data, and pairs whose sizes or dtypes
    differ.  A receive from any source (no peer) pairs with nothing and is not reported."""
    sends: dict[tuple[int, int], list[CollectiveRow]] = defaultdict(list)
    recvs: dict[tuple[int, int], list[CollectiveRow]] = defaultdict(list)
    for r, rows in by_rank.items():
        for x in rows:
            if x.peer is None:
                continue
            if x.type == "send":
                sends[(r, x.peer)].append(x)
            elif x.type == "recv":
                recvs[(x.peer, r)].append(x)
    out: list[Mismatch] = []

    def mismatch(kind: str, x: CollectiveRow, ranks: tuple[int, ...], text: str) -> None:
        out.append(_mismatch(kind, step, group, ranks, x, ((x.rank, x.type),), text))

    for key in sorted(set(sends) | set(recvs)):
        src, dst = key
        s, v = sends.get(key, []), recvs.get(key, [])
        for a, b in zip(s, v, strict=False):
            if (a.sent, a.dtypes) != (b.written, b.dtypes):
                mismatch(
                    "p2p",
                    b,
                    (src, dst),
                    f"step {step}: rank {src} sends {a.sent} elements of {'/'.join(a.dtypes)} "
                    f"({_label(a)}) where rank {dst} receives {b.written} of "
                    f"{'/'.join(b.dtypes)} ({_label(b)}).",
                )
        # The unpaired sends wait on the receiver, the unpaired receives on the sender.
        unpaired = [(x, dst, "posted no receive for", src) for x in s[len(v) :]]
        unpaired += [(x, src, "sent nothing for", dst) for x in v[len(s) :]]
        for x, peer, did, owner in unpaired:
            if peer in by_rank:
                mismatch(
                    "missing",
                    x,
                    (peer,),
                    f"step {step}: rank {peer} {did} rank {owner}'s {_label(x)} in group {group!r}.",
                )
    return out
