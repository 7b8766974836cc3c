"""The walk of one step diff: aligned ops in execution order, and what their tensors say.

:class:`StepWalk` walks the alignment of two steps' ops (:mod:`replayer.diff.align`) once, asks
:class:`replayer.diff.pairs.TensorPairs` for the tensor pairs in each op pair's argument slots,
and records structural changes (ops on one side only, module, attribute, order, arity, dtype and
shape changes), the ops with a non-identical output, and the **origin** of the divergence;
:meth:`StepWalk.finish` turns that into a :class:`StepDiff`.  :func:`replayer.diff.diff_steps`
runs it.
"""

from __future__ import annotations

from typing import Any

from replayer.diff.align import Alignment, align_keys, occurrences, op_keys
from replayer.diff.lineage import attrs_differ, chain_to, find_loss
from replayer.diff.numeric import compare_scalars
from replayer.diff.pairs import PairResult, TensorPairs
from replayer.diff.results import (
    OpDivergence,
    OpRef,
    Origin,
    PhaseSpan,
    ScalarDiff,
    Status,
    StepDiff,
    StructuralChange,
)
from tracefmt.model import OpNode, Phase, Role
from tracefmt.reader import Step

__all__ = ["StepWalk"]

_ORIGIN_STRUCTURAL = ("added", "removed", "dtype", "shape", "arity")


class StepWalk:
    """The state of one step diff; :meth:`run` walks the aligned ops once."""

    def __init__(self, a: Step, b: Step, rtol: float | None, atol: float | None, values: bool) -> None:
        self.a, self.b = a, b
        self.rtol, self.atol = rtol, atol
        self.structural: list[StructuralChange] = []
        self.divergences: list[OpDivergence] = []
        self.origin: Origin | None = None
        self.ka = op_keys(a.ops, a.tensors)
        self.kb = op_keys(b.ops, b.tensors)
        self._occ: dict[str, list[int]] = {}
        self._a_to_b: list[int] | None = None
        self._loss_a: int | None = None
        self.al: Alignment = align_keys(self.ka, self.kb, a.ops, b.ops)
        self.pairs = TensorPairs(a, b, rtol, atol, values, self._aligned, self.al.identity)

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
            name = self.b.tensors[t].meta.name
            if name:
                by_name.setdefault(name, k)
            by_pos.setdefault(pos_b[k] if k < len(pos_b) else k, k)
        used: set[int] = set()
        pairs = []
        for k, t in enumerate(xa):
            name = self.a.tensors[t].meta.name
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
        pairs = self.pairs
        same_graph = pairs.state is not None
        for pos, (i, j) in enumerate(zip(al.a, al.b, strict=True)):
            if i < 0 or j < 0:
                self._unmatched(pos, i, j)
                continue
            oa, ob = ops_a[i], ops_b[j]
            if (
                same_graph
                and oa.inputs == ob.inputs
                and oa.outputs == ob.outputs
                and oa.input_args == ob.input_args
                and oa.attrs == ob.attrs
                and pairs.fast(oa)
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
            ins = [pairs.input(x, y) for x, y in self._slots(oa, ob, False)]
            inputs_diverged = any(r.diverged for r in ins)
            outs = [pairs.output(x, y, inputs_diverged) for x, y in self._slots(oa, ob, True)]
            if pairs.pending:
                self._flush_pending(pos, i, j, ob.module)
            diverged_outs = [r for r in outs if r.diverged]
            if diverged_outs:
                self._diverged(pos, i, j, ins, diverged_outs, inputs_diverged)

    def _diverged(
        self,
        pos: int,
        i: int,
        j: int,
        ins: list[PairResult],
        outs: list[PairResult],
        inputs_diverged: bool,
    ) -> None:
        status = max((r.status for r in outs), default=Status.UNKNOWN)
        tds = tuple(r.diff for r in outs if r.diff is not None)
        div = OpDivergence(pos, self.ref("a", i), self.ref("b", j), status, tds, not inputs_diverged)
        self.divergences.append(div)
        if self.origin is not None:
            return
        in_tds = tuple(r.diff for r in ins if r.diff is not None)
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
        for x, y in self.pairs.take_pending():
            ma, mb = self.a.tensors[x].meta, self.b.tensors[y].meta
            name = ma.name or mb.name or f"t{x}"
            if ma.dtype is not mb.dtype:
                dtypes.append(f"{name}: {ma.dtype.label} -> {mb.dtype.label}")
            if ma.shape != mb.shape:
                shapes.append(f"{name}: {list(ma.shape)} -> {list(mb.shape)}")
        if dtypes:
            self._change("dtype", pos, i, j, module, "; ".join(dtypes[:4]))
        if shapes:
            self._change("shape", pos, i, j, module, "; ".join(shapes[:4]))

    def _unmatched(self, pos: int, i: int, j: int) -> None:
        op = self.a.ops[i] if i >= 0 else self.b.ops[j]
        tensors = self.a.tensors if i >= 0 else self.b.tensors
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
        mark = self.pairs.diverged_a if i >= 0 else self.pairs.diverged_b
        mark.update(op.outputs)

    # -- after the walk --------------------------------------------------------------------
    def finish(self) -> StepDiff:
        al = self.al
        self._loss_a = find_loss(self.a)
        first_struct = next((c for c in self.structural if c.kind in _ORIGIN_STRUCTURAL), None)
        origin = self.origin
        diverged_any = bool(self.divergences) or self.pairs.counts[Status.DIFFERENT] > 0
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
        counts = self.pairs.counted()
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
            first_parameter=self.pairs.firsts.get(Role.PARAMETER),
            first_gradient=self.pairs.firsts.get(Role.GRADIENT),
            first_optimizer_state=self.pairs.firsts.get(Role.OPTIMIZER_STATE),
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
        diverged = self.pairs.diverged_a if side == "a" else self.pairs.diverged_b
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
