"""The numbers that should be the same on every rank, and where two replicas part.

* every all-reduce, broadcast and all-gather writes the same values on every rank of its group
  (compared by the fingerprints of what it wrote, where they were measured);
* data-parallel replicas hold the same parameters after the optimizer step (each parameter's last
  version in the step, by name), and the same gradients after the all-reduce (each gradient's last
  version, in a step that issued an all-reduce).

Ranks are taken for replicas of a parameter when they hold it under the same name, shape and
dtype.  A step that issued a reduce-scatter shards its parameters (FSDP, ZeRO): there each rank
holds its own shard and the replica checks are skipped, with a note.  When replicas differ, the
two steps are compared with :func:`replayer.diff.diff_steps` to find the op where they part.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

from replayer.diff import diff_steps
from replayer.diff.results import OpRef, StepDiff
from replayer.ranks.digest import RankDigest, TensorPrint
from replayer.ranks.findings import Parting, ValueFinding
from replayer.ranks.matching import Column
from tracefmt import OpNode, Step, TraceError

#: Collectives whose result is the same on every rank of the group.
REPLICATED_RESULTS = frozenset({"all_reduce", "broadcast", "all_gather"})


def _split(values: Mapping[int, Hashable], prefer: int) -> tuple[list[int], list[int]]:
    """(ranks holding the most common value, the other ranks); a tie goes to ``prefer``'s."""
    common = Counter(values.values()).most_common()
    top = common[0][1]
    ties = [v for v, n in common if n == top]
    pick = values[prefer] if prefer in values and values[prefer] in ties else ties[0]
    same = sorted(r for r, v in values.items() if v == pick)
    return same, sorted(r for r, v in values.items() if v != pick)


def collective_values(step: int, group: str, columns: Iterable[Column]) -> list[ValueFinding]:
    """Value findings for the matched collectives of one group whose results should agree."""
    out = []
    for col in columns:
        ref = col.reference
        if ref.type not in REPLICATED_RESULTS or ref.kind != "collective":
            continue
        # Rows whose shape or dtype differs are mismatches already, not different values.
        prints = {
            r: row.fingerprints
            for r, row in col.rows.items()
            if row.fingerprints
            and None not in row.fingerprints
            and (row.type, row.written, row.dtypes) == (ref.type, ref.written, ref.dtypes)
        }
        if len(prints) < 2 or len({len(p) for p in prints.values()}) > 1:
            continue
        same, odd = _split(prints, ref.rank)
        if not odd:
            continue
        out.append(
            ValueFinding(
                kind="collective_output",
                step=step,
                group=group,
                name=ref.op,
                module=ref.module,
                seq=ref.seq,
                ranks=tuple(odd),
                reference=tuple(same),
                count=1,
                names=(),
                parting=None,
                message=f"step {step}: {ref.op} (seq {ref.seq}, module "
                f"{ref.module or '<top>'!r}) in group {group!r} wrote different values on "
                f"rank{'s' if len(odd) > 1 else ''} {', '.join(map(str, odd))} than on rank"
                f"{'s' if len(same) > 1 else ''} {', '.join(map(str, same[:8]))}.",
            )
        )
    return out


def _differing(
    order: Sequence[str], prints: Mapping[int, Mapping[str, TensorPrint]], prefer: int
) -> tuple[list[str], list[int], list[int]]:
    """Names whose measured fingerprints differ across ranks (in ``order``), and the first one's
    (reference ranks, differing ranks).  Ranks whose shape or dtype differs are not replicas of
    that tensor and are left out of its comparison."""
    names: list[str] = []
    first: tuple[list[int], list[int]] = ([], [])
    for name in order:
        held = {r: p[name] for r, p in prints.items() if name in p and p[name].fingerprint is not None}
        if len(held) < 2:
            continue
        layout, _ = _split({r: (t.shape, t.dtype) for r, t in held.items()}, prefer)
        values = {r: held[r].fingerprint for r in layout}
        same, odd = _split(values, prefer)
        if odd:
            if not names:
                first = (same, odd)
            names.append(name)
    return names, first[0], first[1]


def _order(digests: Sequence[RankDigest], pick: Callable[[RankDigest], Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for d in digests:
        for name in pick(d):
            seen.setdefault(name, None)
    return list(seen)


def replica_values(
    step: int, digests: Mapping[int, RankDigest], load: Callable[[int], Step]
) -> tuple[list[ValueFinding], list[str]]:
    """Parameter and gradient findings of ``step`` across ranks, with where replicas part, and
    notes.  ``load(rank)`` reads that rank's step again (two of them, for the diff)."""
    if len(digests) < 2:
        return [], []
    ranked = [digests[r] for r in sorted(digests)]
    types = {row.type for d in ranked for row in d.collectives}
    if "reduce_scatter" in types:
        return [], [
            f"step {step} issued a reduce-scatter: its parameters are sharded (FSDP, ZeRO), so "
            "parameters and gradients were not compared across ranks."
        ]
    prefer = ranked[0].rank
    findings: list[ValueFinding] = []
    checks = [
        ("parameter", _order(ranked, lambda d: d.params_entry), {d.rank: d.params for d in ranked})
    ]
    if "all_reduce" in types:
        checks.append(("gradient", _order(ranked, lambda d: d.grads), {d.rank: d.grads for d in ranked}))
    parting: Parting | None = None
    notes: list[str] = []
    for kind, order, prints in checks:
        names, same, odd = _differing(order, prints, prefer)
        if not names:
            continue
        if parting is None:
            parting, note = _parting(step, digests[same[0]], digests[odd[0]], load)
            notes.extend(note)
        first = names[0]
        what = f"{kind}s differ" if len(names) > 1 else f"{kind} differs"
        findings.append(
            ValueFinding(
                kind=kind,
                step=step,
                group="",
                name=first,
                module="",
                seq=None,
                ranks=tuple(odd),
                reference=tuple(same),
                count=len(names),
                names=tuple(names[:10]),
                parting=parting,
                message=f"step {step}: {len(names)} {what} across replicas; the first is "
                f"{first!r}, on rank{'s' if len(odd) > 1 else ''} "
                f"{', '.join(map(str, odd[:8]))} against rank{'s' if len(same) > 1 else ''} "
                f"{', '.join(map(str, same[:8]))}.",
            )
        )
    return findings, notes


def _ref(how: str, step: int, a: int, b: int, ref: OpRef | OpNode | None, message: str) -> Parting:
    if ref is None:
        return Parting(step, a, b, how, "", "", "", None, message)
    return Parting(step, a, b, how, ref.name, ref.module, ref.phase.label, ref.index, message)


def _parting(
    step: int, da: RankDigest, db: RankDigest, load: Callable[[int], Step]
) -> tuple[Parting | None, list[str]]:
    a, b = da.rank, db.rank
    try:
        sa, sb = load(a), load(b)
    except TraceError as e:
        return None, [f"step {step}: ranks {a} and {b} could not be diffed: {e}"]
    for name, pa in da.params_entry.items():
        pb = db.params_entry.get(name)
        if pb and None not in (pa.fingerprint, pb.fingerprint) and pa != pb:
            reader = next(
                (op for op in sb.ops if any(sb.tensors[t].name == name for t in op.inputs)), None
            )
            where = f"; {reader.name} in {reader.module or '<top>'!r} reads it first" if reader else ""
            text = (
                f"parameter {name!r} already differs between ranks {a} and {b} when step {step} "
                f"starts (a different initialisation, or an earlier step parted them){where}."
            )
            return _ref("entry", step, a, b, reader, text), []
    try:
        d = diff_steps(sa, sb)
    except TraceError as e:
        return None, [f"step {step}: ranks {a} and {b} could not be diffed: {e}"]
    return _after_collectives(step, a, b, d, da.last_collective, db.last_collective), []


def _after_collectives(
    step: int, a: int, b: int, d: StepDiff, last_a: int, last_b: int
) -> Parting | None:
    """The first op after the step's last collective where ranks ``a`` and ``b`` part: an op only
    one of them ran, or one that read identical inputs and wrote different outputs.  Data-parallel
    ranks differ before the all-reduce by design (each has its own batch); after it they should
    compute the same numbers.  Falls back to the diff's origin."""
    candidates: list[tuple[int, Parting]] = []
    for c in d.structural:
        # an op only rank a ran has no b side; name the op on the rank that ran it
        ref, who, other, last = (c.b, b, a, last_b) if c.b is not None else (c.a, a, b, last_a)
        if ref is None or ref.index <= last:
            continue
        if c.kind in ("added", "removed"):
            text = f"rank {who} ran {ref.label}, which rank {other} did not."
        else:
            text = f"{c.kind} of {ref.label} differs between ranks {a} and {b}: {c.detail}."
        candidates.append((c.position, _ref("structural", step, a, b, ref, text)))
        break
    for x in d.divergences:
        if x.inputs_match and x.b.index > last_b:
            text = (
                f"{x.b.label} read identical inputs on ranks {a} and {b} and wrote "
                f"different outputs (after the step's last collective)."
            )
            candidates.append((x.position, _ref("op", step, a, b, x.b, text)))
            break
    if candidates:
        return min(candidates, key=lambda c: c[0])[1]
    if d.origin is None:
        return None
    o = d.origin
    return _ref("origin", step, a, b, o.b or o.a, o.message)
