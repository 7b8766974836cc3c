"""The walk of one step diff: aligned ops in execution order, tensor pairs compared once.

:class:`StepWalk` holds the state (the alignment, a memo of compared tensor pairs, the
divergences and structural changes found so far); :func:`replayer.diff.diff_steps` runs it.  On
the common path (both steps have the same graph shape) a first pass marks tensor ``i`` of A
against tensor ``i`` of B as bit-identical or view-only from the fingerprints, and ops whose
tensors are all such are skipped with a few comparisons each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from replayer.diff.align import Alignment, align_keys, occurrences, op_keys
from replayer.diff.lineage import attrs_differ, chain_to, find_loss
from replayer.diff.numeric import compare_scalars, measure, tolerance_for
from replayer.diff.results import (
    Counts,
    Distance,
    OpDivergence,
    OpRef,
    Origin,
    PhaseSpan,
    ScalarDiff,
    Status,
    StepDiff,
    StructuralChange,
    TensorDiff,
    Tolerance,
)
from tracefmt.dtypes import DType
from tracefmt.model import OpNode, Phase, Role, TensorRecord
from tracefmt.reader import Step

__all__ = ["StepWalk"]

_DIVERGED = (Status.CLOSE, Status.DIFFERENT)
_FIRST_ROLES = (Role.PARAMETER, Role.GRADIENT, Role.OPTIMIZER_STATE)
_ORIGIN_STRUCTURAL = ("added", "removed", "dtype", "shape", "arity")
# One compared pair of tensors: its status, whether it counts as diverged, and the details.
_Pair = tuple[Status, bool, TensorDiff | None]
_EQUAL: _Pair = (Status.EQUAL, False, None)
_UNKNOWN: _Pair = (Status.UNKNOWN, False, None)
_LABELS = {d: d.label for d in DType}


class StepWalk:
    """The state of one step diff; :meth:`run` walks the aligned ops once."""

    def __init__(self, a: Step, b: Step, rtol: float | None, atol: float | None, values: bool) -> None:
        self.a, self.b = a, b
        self.rtol, self.atol, self.values = rtol, atol, values
        self.ta, self.tb = a.tensors, b.tensors
        self.fp_a, self.num_a = _numbers(a.tensors)
        self.fp_b, self.num_b = _numbers(b.tensors)
        self.memo: dict[tuple[int, int], _Pair] = {}
        self.counts = [0, 0, 0, 0]
        self.firsts: dict[Role, TensorDiff] = {}
        self.diverged_a: set[int] = set()
        self.diverged_b: set[int] = set()
        self.structural: list[StructuralChange] = []
        self.divergences: list[OpDivergence] = []
        self.origin: Origin | None = None
        self.ka = op_keys(a.ops, a.tensors)
        self.kb = op_keys(b.ops, b.tensors)
        self._occ: dict[str, list[int]] = {}
        self._a_to_b: list[int] | None = None
        self._pending: list[tuple[int, int]] = []
        self._tolerances: dict[tuple[DType, DType], Tolerance] = {}
        self._loss_a: int | None = None
        self.al: Alignment = align_keys(self.ka, self.kb, a.ops, b.ops)
        # Fast path (same graph shape): tensor i of A against tensor i of B, decided in one pass.
        self.state: list[int] | None = None
        self.touched = bytearray(len(a.tensors))
        if self.al.identity and len(a.tensors) == len(b.tensors):
            self.state = self._same_index_states()

    def _same_index_states(self) -> list[int]:
        """Per tensor index: 1 when A's and B's tensors are bit-identical (fingerprints), 2 when
        neither has anything to compare (views), 0 when it needs a closer look."""
        out = []
        for ta, tb, fa, fb, na, nb in zip(
            self.ta, self.tb, self.fp_a, self.fp_b, self.num_a, self.num_b, strict=True
        ):
            ma, mb = ta.meta, tb.meta
            if ma.dtype is not mb.dtype or ma.shape != mb.shape:
                out.append(0)
            elif fa is not None and fb is not None:
                out.append(1 if fa == fb else 0)
            else:
                out.append(2 if not (na and nb) else 0)
        return out

    # -- references ------------------------------------------------------------------------
    def ref(self, side: str, i: int) -> OpRef:
        occ = self._occ.get(side)
        if occ is None:
            occ = self._occ[side] = occurrences(self.ka if side == "a" else self.kb)
        op = (self.a if side == "a" else self.b).ops[i]
        return OpRef(i, op.name, op.phase, op.module, occ[i])

    def _aligned(self, pa: int, pb: int) -> bool:
        if self.al.identity:
            return pa == pb
        if self._a_to_b is None:
            m = [-1] * len(self.a.ops)
            for x, y in zip(self.al.a, self.al.b, strict=True):
                if x >= 0:
                    m[x] = y
            self._a_to_b = m
        return self._a_to_b[pa] == pb

    # -- tensor pairs ----------------------------------------------------------------------
    def _compare(self, i: int, j: int) -> tuple[Status, TensorDiff | None]:
        ta, tb = self.ta[i], self.tb[j]
        ma, mb = ta.meta, tb.meta
        same_kind = ma.dtype is mb.dtype and ma.shape == mb.shape
        if same_kind:
            fa, fb = self.fp_a[i], self.fp_b[j]
            if fa is not None and fb is not None and fa == fb:
                return Status.EQUAL, None
            if not (self.num_a[i] and self.num_b[j]):
                return Status.UNKNOWN, None
        tol = self._tolerances.get((ma.dtype, mb.dtype))
        if tol is None:
            tol = self._tolerances[ma.dtype, mb.dtype] = tolerance_for(
                ma.dtype, mb.dtype, self.rtol, self.atol
            )
        status, dist = measure(ta, tb, tol, self.values)
        if status is Status.EQUAL and not same_kind:
            status = Status.CLOSE
        if status is Status.EQUAL:
            return status, None
        if status is Status.UNKNOWN and same_kind:
            return status, None
        return status, self._tensor_diff(i, j, status, dist, inferred=False)

    def _tensor_diff(
        self, i: int, j: int, status: Status, dist: Distance | None, inferred: bool
    ) -> TensorDiff:
        ta, tb = self.ta[i], self.tb[j]
        ma, mb = ta.meta, tb.meta
        role = ma.role if ma.role is not Role.ACTIVATION else mb.role
        return TensorDiff(
            i,
            j,
            ma.name or mb.name,
            role,
            status,
            _LABELS[ma.dtype],
            _LABELS[mb.dtype],
            ma.shape,
            mb.shape,
            dist,
            ta.stats,
            tb.stats,
            inferred,
            ma.producer is None and mb.producer is None,
        )

    def _store(
        self, key: tuple[int, int], status: Status, diverged: bool, td: TensorDiff | None
    ) -> _Pair:
        i, j = key
        self.counts[status] += 1
        if status is not Status.EQUAL:
            ma, mb = self.ta[i].meta, self.tb[j].meta
            if ma.dtype is not mb.dtype or ma.shape != mb.shape:
                self._pending.append(key)
        if diverged:
            self.diverged_a.add(i)
            self.diverged_b.add(j)
            if td is None:
                td = self._tensor_diff(i, j, status, None, inferred=True)
            if not td.inferred and td.role in _FIRST_ROLES and td.role not in self.firsts:
                self.firsts[td.role] = td
        result = (status, diverged, td)
        self.memo[key] = result
        return result

    def _same(self, i: int, j: int, inputs_diverged: bool = False) -> _Pair | None:
        """The pair ``(i, i)`` decided by the fast path's first pass, if it was (a view made
        from diverged inputs is not: it diverged too)."""
        if i != j or self.state is None:
            return None
        st = self.state[i]
        if st == 0 or (st == 2 and inputs_diverged):
            return None
        self.touched[i] = 1
        return _EQUAL if st == 1 else _UNKNOWN

    def pair_input(self, i: int, j: int) -> _Pair:
        key = (i, j)
        known = self.memo.get(key)
        if known is not None:
            return known
        same = self._same(i, j)
        if same is not None:
            return same
        status, td = self._compare(i, j)
        if td is not None:
            diverged = True
        elif status is Status.UNKNOWN:
            pa, pb = self.ta[i].meta.producer, self.tb[j].meta.producer
            # Entered the step on both sides: nothing says it differs.  Made by ops that were
            # not aligned with each other: the data flow itself differs.
            diverged = (pa is None) != (pb is None) or (
                pa is not None and pb is not None and not self._aligned(pa, pb)
            )
        else:
            diverged = False
        return self._store(key, status, diverged, td)

    def pair_output(self, i: int, j: int, inputs_diverged: bool) -> _Pair:
        key = (i, j)
        known = self.memo.get(key)
        if known is not None:
            return known
        same = self._same(i, j, inputs_diverged)
        if same is not None:
            return same
        status, td = self._compare(i, j)
        diverged = td is not None or (status is Status.UNKNOWN and inputs_diverged)
        return self._store(key, status, diverged, td)

    # -- slots -----------------------------------------------------------------------------
    def _slots(self, oa: OpNode, ob: OpNode, outputs: bool) -> list[tuple[int, int]]:
        """Pairs of tensors in corresponding argument slots (by name first where they differ)."""
        xa, xb = (oa.outputs, ob.outputs) if outputs else (oa.inputs, ob.inputs)
        if len(xa) == len(xb) and (outputs or oa.input_args == ob.input_args):
            return list(zip(xa, xb, strict=True))
        pos_a = list(range(len(xa))) if outputs else list(oa.input_args)
        pos_b = list(range(len(xb))) if outputs else list(ob.input_args)
        by_name: dict[str, int] = {}
        by_pos: dict[Any, int] = {}
        for k, t in enumerate(xb):
            name = self.tb[t].meta.name
            if name:
                by_name.setdefault(name, k)
            by_pos.setdefault(pos_b[k] if k < len(pos_b) else k, k)
        used: set[int] = set()
        pairs = []
        for k, t in enumerate(xa):
            name = self.ta[t].meta.name
            hit = by_name.get(name) if name else None
            if hit is None or hit in used:
                hit = by_pos.get(pos_a[k] if k < len(pos_a) else k)
            if hit is not None and hit not in used:
                used.add(hit)
                pairs.append((t, xb[hit]))
        return pairs

    # -- the walk --------------------------------------------------------------------------
    def run(self) -> None:
        al, ops_a, ops_b = self.al, self.a.ops, self.b.ops
        renamed, moved = al.renamed, al.moved
        state, touched, diverged_a = self.state, self.touched, self.diverged_a
        for pos, (i, j) in enumerate(zip(al.a, al.b, strict=True)):
            if i < 0 or j < 0:
                self._unmatched(pos, i, j)
                continue
            oa, ob = ops_a[i], ops_b[j]
            if (
                state is not None
                and oa.inputs == ob.inputs
                and oa.outputs == ob.outputs
                and oa.input_args == ob.input_args
                and oa.attrs == ob.attrs
                and _fast(oa, state, diverged_a, touched)
            ):
                continue
            if pos in renamed and oa.module != ob.module:
                self._change(
                    "module",
                    pos,
                    i,
                    j,
                    ob.module,
                    f"module {oa.module or '<top>'!r} in A is {ob.module or '<top>'!r} in B",
                )
            if oa.attrs != ob.attrs:
                names = attrs_differ(oa.attrs, ob.attrs)
                if names:
                    self._change(
                        "attrs",
                        pos,
                        i,
                        j,
                        ob.module,
                        "; ".join(f"{n}: {oa.attrs.get(n)!r} -> {ob.attrs.get(n)!r}" for n in names[:4]),
                    )
            if pos in moved:
                self._change(
                    "order",
                    pos,
                    i,
                    j,
                    ob.module,
                    f"{oa.name} ran in another order relative to its neighbours "
                    f"(op {i} in A, op {j} in B)",
                )
            if len(oa.inputs) != len(ob.inputs) or len(oa.outputs) != len(ob.outputs):
                self._change(
                    "arity",
                    pos,
                    i,
                    j,
                    ob.module,
                    f"{len(oa.inputs)} -> {len(ob.inputs)} inputs, "
                    f"{len(oa.outputs)} -> {len(ob.outputs)} outputs",
                )
            ins = [self.pair_input(x, y) for x, y in self._slots(oa, ob, False)]
            inputs_diverged = False
            for r in ins:
                if r[1]:
                    inputs_diverged = True
                    break
            outs = [self.pair_output(x, y, inputs_diverged) for x, y in self._slots(oa, ob, True)]
            if self._pending:
                self._flush_pending(pos, i, j, ob.module)
            diverged_outs = [r for r in outs if r[1]]
            if diverged_outs:
                self._diverged(pos, i, j, ins, diverged_outs, inputs_diverged)

    def counted(self) -> Counts:
        """Pairs compared, by status (the fast path's pairs counted once each)."""
        c = list(self.counts)
        if self.state is not None:
            touched = np.frombuffer(self.touched, dtype=np.uint8).astype(bool)
            for i, j in self.memo:  # counted when stored
                if i == j:
                    touched[i] = False
            state = np.asarray(self.state, dtype=np.int8)
            c[Status.EQUAL] += int(np.count_nonzero(touched & (state == 1)))
            c[Status.UNKNOWN] += int(np.count_nonzero(touched & (state == 2)))
        return Counts(c[Status.EQUAL], c[Status.CLOSE], c[Status.DIFFERENT], c[Status.UNKNOWN])

    def _diverged(
        self, pos: int, i: int, j: int, ins: list[_Pair], outs: list[_Pair], inputs_diverged: bool
    ) -> None:
        status = max((r[0] for r in outs), default=Status.UNKNOWN)
        tds = tuple(r[2] for r in outs if r[2] is not None)
        div = OpDivergence(pos, self.ref("a", i), self.ref("b", j), status, tds, not inputs_diverged)
        self.divergences.append(div)
        if self.origin is not None:
            return
        in_tds = tuple(r[2] for r in ins if r[2] is not None)
        external = [t for t in in_tds if t.external and not t.inferred]
        if external:
            t = external[0]
            label = f"{t.role.label} {t.name!r}" if t.name else f"{t.role.label} tensor {t.a}"
            msg = (
                f"{label} already differs when it enters the step; the first op reading it is "
                f"{div.a.name} in {div.a.module or '<top>'} ({div.a.phase.label})."
            )
            self.origin = Origin("input", pos, div.a, div.b, t, in_tds, tds, msg)
        elif not inputs_diverged and any(not t.inferred for t in tds):
            t = next(t for t in tds if not t.inferred)
            attrs = [c.detail for c in self.structural[-3:] if c.position == pos and c.kind == "attrs"]
            why = f" (attributes differ: {attrs[0]})" if attrs else ""
            msg = (
                f"{div.a.name} in {div.a.module or '<top>'} ({div.a.phase.label}) read "
                f"bit-identical inputs and wrote different outputs{why}."
            )
            self.origin = Origin("op", pos, div.a, div.b, t, in_tds, tds, msg)

    def _change(self, kind: str, pos: int, i: int, j: int, module: str, detail: str) -> None:
        self.structural.append(
            StructuralChange(
                kind,
                pos,
                self.ref("a", i) if i >= 0 else None,
                self.ref("b", j) if j >= 0 else None,
                module,
                detail,
            )
        )

    def _flush_pending(self, pos: int, i: int, j: int, module: str) -> None:
        dtypes, shapes = [], []
        for x, y in self._pending:
            ma, mb = self.ta[x].meta, self.tb[y].meta
            name = ma.name or mb.name or f"t{x}"
            if ma.dtype is not mb.dtype:
                dtypes.append(f"{name}: {ma.dtype.label} -> {mb.dtype.label}")
            if ma.shape != mb.shape:
                shapes.append(f"{name}: {list(ma.shape)} -> {list(mb.shape)}")
        self._pending = []
        if dtypes:
            self._change("dtype", pos, i, j, module, "; ".join(dtypes[:4]))
        if shapes:
            self._change("shape", pos, i, j, module, "; ".join(shapes[:4]))

    def _unmatched(self, pos: int, i: int, j: int) -> None:
        op = self.a.ops[i] if i >= 0 else self.b.ops[j]
        tensors = self.ta if i >= 0 else self.tb
        shapes = ", ".join(
            f"{tensors[t].meta.dtype.label}{list(tensors[t].meta.shape)}" for t in op.outputs[:3]
        )
        kind = "removed" if i >= 0 else "added"
        side = "A" if i >= 0 else "B"
        self._change(
            kind,
            pos,
            i,
            j,
            op.module,
            f"{op.name} in {op.module or '<top>'} ({op.phase.label}) ran in {side} only"
            + (f" -> {shapes}" if shapes else ""),
        )
        mark = self.diverged_a if i >= 0 else self.diverged_b
        mark.update(op.outputs)

    # -- after the walk --------------------------------------------------------------------
    def finish(self) -> StepDiff:
        al = self.al
        self._loss_a = find_loss(self.a)
        first_struct = next((c for c in self.structural if c.kind in _ORIGIN_STRUCTURAL), None)
        origin = self.origin
        diverged_any = bool(self.divergences) or self.counts[Status.DIFFERENT] > 0
        if origin is None and first_struct is not None and diverged_any:
            msg = (
                f"No op computed different numbers from identical inputs; the divergence "
                f"starts with a structural change: {first_struct.detail}."
            )
            origin = Origin(
                "structural", first_struct.position, first_struct.a, first_struct.b, None, (), (), msg
            )
        chain, chain_side, chain_diverged = self._chain(origin)
        added, removed = self._modules()
        scalars = tuple(
            ScalarDiff(n, x, y, w)
            for n, x, y, w in compare_scalars(self.a.scalars, self.b.scalars, self.rtol, self.atol)
        )
        counts = self.counted()
        structural_changes = bool(self.structural)
        identical = (
            not structural_changes
            and counts.close == 0
            and counts.different == 0
            and not self.divergences
            and not scalars
        )
        equal = (
            not structural_changes and counts.different == 0 and all(s.within_tolerance for s in scalars)
        )
        return StepDiff(
            step_a=self.a.step,
            step_b=self.b.step,
            rank_a=self.a.rank,
            rank_b=self.b.rank,
            ops_a=len(self.a.ops),
            ops_b=len(self.b.ops),
            matched=al.matched,
            positions=len(al),
            identical=identical,
            equal=equal,
            counts=counts,
            rtol=self.rtol,
            atol=self.atol,
            structural=tuple(self.structural),
            divergences=tuple(self.divergences),
            origin=origin,
            first_beyond_tolerance=next(
                (d for d in self.divergences if d.status is Status.DIFFERENT), None
            ),
            first_parameter=self.firsts.get(Role.PARAMETER),
            first_gradient=self.firsts.get(Role.GRADIENT),
            first_optimizer_state=self.firsts.get(Role.OPTIMIZER_STATE),
            chain=chain,
            chain_side=chain_side,
            chain_diverged=chain_diverged,
            loss_a=self._loss_a,
            modules_added=added,
            modules_removed=removed,
            scalars=scalars,
            phase_spans=self._spans(),
        )

    def _chain(self, origin: Origin | None) -> tuple[tuple[OpRef, ...], str, bool]:
        if origin is None:
            return (), "a", False
        side = "a" if origin.a is not None else "b"
        start = origin.a if origin.a is not None else origin.b
        step = self.a if side == "a" else self.b
        loss = self._loss_a if side == "a" else find_loss(step)
        if start is None or loss is None:
            return (), side, False
        diverged = self.diverged_a if side == "a" else self.diverged_b
        path, through = chain_to(step.ops, step.tensors, start.index, loss, diverged)
        return tuple(self.ref(side, k) for k in path), side, through

    def _modules(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Topmost modules whose ops ran on one side only (B's: added, A's: removed)."""
        if self.al.identity:
            return (), ()
        out: list[tuple[str, ...]] = []
        for ops, mine, other in ((self.b.ops, self.al.b, self.al.a), (self.a.ops, self.al.a, self.al.b)):
            lonely: set[str] = set()
            kept: set[str] = set()
            for x, y in zip(mine, other, strict=True):
                if x < 0:
                    continue
                target = lonely if y < 0 else kept
                module = ops[x].module
                while module:
                    target.add(module)
                    module = module.rpartition(".")[0]
            mods = lonely - kept
            out.append(tuple(sorted(m for m in mods if m.rpartition(".")[0] not in mods)))
        return out[0], out[1]

    def _spans(self) -> tuple[PhaseSpan, ...]:
        al, ops_a, ops_b = self.al, self.a.ops, self.b.ops
        spans: list[PhaseSpan] = []
        current: Phase | None = None
        start = 0
        for pos, (i, j) in enumerate(zip(al.a, al.b, strict=True)):
            phase = ops_a[i].phase if i >= 0 else ops_b[j].phase
            if phase is not current:
                if current is not None:
                    spans.append(PhaseSpan(current, start, pos))
                current, start = phase, pos
        if current is not None:
            spans.append(PhaseSpan(current, start, len(al)))
        return tuple(spans)


def _numbers(tensors: Sequence[TensorRecord]) -> tuple[list[int | None], list[bool]]:
    """Fingerprints, and whether each tensor has any numbers recorded (statistics or values;
    views and uninitialised tensors have none)."""
    fps: list[int | None] = []
    has: list[bool] = []
    for t in tensors:
        s = t.stats
        if s is None:
            fps.append(None)
            has.append(t.has_values)
        else:
            fps.append(s.fingerprint)
            has.append(
                s.fingerprint is not None
                or s.min is not None
                or s.mean is not None
                or s.norm is not None
                or t.has_values
            )
    return fps, has


def _fast(op: OpNode, state: list[int], diverged: set[int], touched: bytearray) -> bool:
    """True (and the op's tensors marked compared) when an op whose two sides have the same
    tensor indices needs no closer look: every input bit-identical or an undiverged view,
    every output bit-identical or a view."""
    for t in op.inputs:
        st = state[t]
        if st == 0 or (st == 2 and t in diverged):
            return False
    for t in op.outputs:
        if state[t] == 0:
            return False
    for t in op.inputs:
        touched[t] = 1
    for t in op.outputs:
        touched[t] = 1
    return True
