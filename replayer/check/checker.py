"""``replayer check``: re-run a recorded step outside torch and compare every op with the record.

How a step is replayed.  The selected ops are mapped to ONNX (:mod:`replayer.export.build`).  Each op's
inputs come from the record where their values were recorded (*local* mode, the default: every
op is checked on its own, so a mismatch names the op that caused it), else from the replay of
their producer; ``chain`` mode feeds only the step's sources (parameters, inputs, optimizer state,
random draws) and replays everything else, so errors accumulate along the step as they would in a
re-run.  Producers outside the selection whose outputs were not recorded are replayed too
(*support* ops, not reported).  Standard nodes run in ONNX Runtime, custom nodes in the ONNX
reference evaluator with numpy references; the ops are grouped into as few batches as their
dependencies allow (:mod:`replayer.check.stages`).

Each op is then *checked* (its outputs compared: values, statistics and fingerprint, view layout,
shape of uninitialized memory, plausibility of random draws), *skipped* (with the reason) or
*failed* (see :mod:`replayer.check.compare` for tolerances).  ``feeds`` replace recorded tensors by
name for a what-if replay (implies ``chain``); the report then lists how the outputs changed.
"""

from __future__ import annotations

import reprlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from replayer.check.addresses import layout_checks
from replayer.check.compare import Comparison, compare_stats, compare_values, has_stats, tolerance
from replayer.check.magnitude import linear, term_magnitudes
from replayer.check.report import (
    CHECKED,
    FAILED,
    SKIPPED,
    Change,
    CheckReport,
    OpResult,
    relative_change,
    value_summary,
)
from replayer.check.runtime import NOT_COMPUTED, RunError
from replayer.check.stages import Replay
from replayer.errors import ReplayError
from replayer.export.mapping import OpUnit, load_selection, map_op, value_names
from replayer.export.ops import RefArgs, plausibility_for
from tracefmt.model import OpNode
from tracefmt.progress import ProgressFn
from tracefmt.reader import Step, Trace

Progress = ProgressFn
#: How much an input's error bound grows through one op, in chain mode: the bound of an output
#: is its op's own rounding (:func:`replayer.check.compare.tolerance`) plus CHAIN_GROWTH times
#: the largest bound of its replayed inputs, so bounds add up along the chain (a factor above 1
#: compounds over the hundreds of ops of a step: 32 reached 1e29 by the GPT example's MLP, and
#: checked nothing).  See the chain section of :mod:`replayer.check.compare`.
CHAIN_GROWTH = 1.0
#: In chain mode no tolerance is below this many epsilons (at most 5%): rounding amplified by
#: ops like Adam's division by sqrt(v) would otherwise read as mismatches.
CHAIN_FLOOR_EPS = 8192


def _resolve_feeds(
    step: Step, names: list[str], feeds: Mapping[str, np.ndarray]
) -> dict[int, np.ndarray]:
    by_name = {n: i for i, n in enumerate(names)}
    out: dict[int, np.ndarray] = {}
    for name, array in feeds.items():
        t = by_name.get(name)
        if t is None:
            raise ReplayError(
                f"--feed {name!r}: no tensor of step {step.step} has that name; use "
                "an ONNX value name as 'replayer export' writes it (a parameter "
                "name such as 'h.0.mlp.c_fc.weight', or 't<index>')."
            )
        meta = step.tensors[t].meta
        if tuple(array.shape) != meta.shape:
            raise ReplayError(
                f"--feed {name!r}: the array has shape {tuple(array.shape)}, the tensor {meta.shape}."
            )
        from replayer.check.compare import cast_to

        out[t] = cast_to(array, meta.dtype)
    return out


def _run_set(step: Step, selected: list[OpNode], fed: Mapping[int, np.ndarray]) -> list[int]:
    """Selected ops plus the producers needed for inputs that the record cannot supply."""
    chosen = {op.index for op in selected}
    queue = list(selected)
    while queue:
        op = queue.pop()
        for t in op.inputs:
            rec = step.tensors[t]
            producer = rec.meta.producer
            if t in fed or producer is None or producer in chosen:
                continue
            if rec.has_values:
                continue  # read from the record (both modes: its producer is outside)
            chosen.add(producer)
            queue.append(step.ops[producer])
    return sorted(chosen)


class _Checker:
    def __init__(
        self,
        step: Step,
        selected: list[OpNode],
        chain: bool,
        fed: dict[int, np.ndarray],
        progress: Progress | None,
    ) -> None:
        self.step = step
        self.chain = chain
        self.fed = fed
        self.names = value_names(step.tensors)
        self.selected = {op.index for op in selected}
        run = _run_set(step, selected, fed)
        self.units: dict[int, OpUnit] = {i: map_op(step, step.ops[i], self.names) for i in run}
        self.replay = Replay(step, self.units, self.names, self.use_record, self.record, progress)
        #: Per replayed tensor: its error relative to its scale, and the scale floor (the size of
        #: the terms it sums) that error is measured against.
        self.err: dict[int, float] = {}
        self.floor: dict[int, float] = {}
        self._magnitudes: dict[int, dict[str, np.ndarray] | None] = {}

    def use_record(self, t: int) -> bool:
        """Whether consumers read tensor ``t`` from the record (or the feed)."""
        if t in self.fed:
            return True
        rec = self.step.tensors[t]
        if not rec.has_values:
            return False
        if not self.chain:
            return True
        producer = rec.meta.producer
        return producer is None or producer not in self.units

    def record(self, t: int) -> np.ndarray:
        return self.fed[t] if t in self.fed else self.step.tensors[t].values()

    # -- judging -----------------------------------------------------------------------------
    def _computed_inputs(self, unit: OpUnit) -> list[int]:
        return [t for t in unit.op.inputs if not self.use_record(t)]

    def _bit_exact(self, unit: OpUnit) -> bool:
        return unit.exact and all(
            self.use_record(t) or self.replay.exact.get(t, False) for t in unit.op.inputs
        )

    def judge(self, index: int, layout: Mapping[int, Comparison]) -> OpResult:
        """Compare one replayed op with the record; also notes the error of its outputs, which
        widens the tolerance of the ops that read them (so call it in op order)."""
        unit = self.units[index]
        op = unit.op
        base: dict[str, Any] = {
            "op": op.index,
            "name": op.name,
            "module": op.module,
            "phase": op.phase.label,
        }
        problem = self.replay.problems.get(index)
        if problem is not None:
            return OpResult(status=SKIPPED, reason=problem, **base)
        if not op.outputs and "returned" in op.attrs and len(op.inputs) == 1:
            return self._judge_number(unit, base)
        if not op.outputs:
            return OpResult(
                status=SKIPPED,
                reason="returns no tensor (e.g. tensor.item()) and the trace holds no number it "
                "returned (attribute 'returned'); nothing to compare",
                **base,
            )
        runtime = "onnxruntime" if unit.standard else "reference"
        comparisons: list[Comparison] = []
        tol_max = 0.0
        draws: dict[int, np.ndarray] = {}
        computed = self._computed_inputs(unit)
        in_err = max((self.err.get(t, 0.0) for t in computed), default=0.0)
        in_floor = max((self.floor.get(t, 0.0) for t in computed), default=0.0)
        reduction = max(
            unit.reduction,
            int(self.replay.notes.get(f"reduction:{unit.nodes[0].name}", 1) if unit.nodes else 1),
        )
        bit_exact = self._bit_exact(unit)
        for t in op.outputs:
            rec = self.step.tensors[t]
            name = self.names[t]
            value = self.replay.env.get(name)
            if value is None or value is NOT_COMPUTED:
                continue
            if tuple(value.shape) != rec.shape:
                comparisons.append(
                    Comparison(
                        False,
                        "values",
                        detail=f"output {name} has shape {tuple(value.shape)}, recorded {rec.shape}",
                    )
                )
                continue
            base_tol = 0.0 if unit.exact else tolerance(rec.dtype, reduction)
            growth = CHAIN_GROWTH if self.chain else (2.0 if unit.exact else 4.0)
            tol = base_tol + growth * in_err
            if self.chain and not bit_exact:
                # an exact op on replayed inputs too: measured against its own scale, the error of
                # relu's or a slice's output grows by the scale the op drops
                tol = max(tol, min(0.05, tolerance(rec.dtype) / 32 * CHAIN_FLOOR_EPS))
            floor = self.replay.notes.get(f"scale:{name}", in_floor if unit.exact or self.chain else 0.0)
            self.floor[t] = floor
            self.err[t] = tol
            tol_max = max(tol_max, tol)
            if unit.random and any(n == name + ".recorded" for n, _ in unit.recorded_inputs):
                draws[rec.meta.producer_slot] = value
                self.err[t] = 0.0
                continue
            if not rec.has_values and plausibility_for(op.name) is not None:
                # A fresh draw: its numbers cannot be replayed, and a handful of samples need not
                # look like the recorded handful.  Nothing to compare without its values.
                self.err[t] = 0.0
                continue
            if rec.has_values and t not in self.fed:
                recorded = self.replay.record(t)
                tol_t = tol or tolerance(rec.dtype, reduction)
                c = compare_values(value, recorded, rec.dtype, tol_t, bit_exact, floor)
                magnitude = None if c.ok or bit_exact else self._magnitude(unit, name)
                if magnitude is not None:
                    c = compare_values(value, recorded, rec.dtype, tol_t, bit_exact, floor, magnitude)
                if c.max_rel is not None:
                    self.err[t] = c.max_rel
            elif rec.stats is not None and has_stats(rec.stats):
                tol_t = tol or tolerance(rec.dtype, reduction)
                c = compare_stats(value, rec.stats, rec.dtype, tol_t, bit_exact)
                magnitude = None if c.ok or bit_exact else self._magnitude(unit, name)
                if magnitude is not None:
                    c = compare_stats(value, rec.stats, rec.dtype, tol_t, bit_exact, magnitude)
            elif unit.uninitialized:
                c = Comparison(True, "shape")
            elif index in layout:
                c = layout[index]
            else:
                continue
            comparisons.append(c)
        if draws:
            check = plausibility_for(op.name)
            args = RefArgs(op.name, [], [], op.attrs, {})
            problem = check(args, draws) if check is not None else None
            comparisons.append(Comparison(problem is None, "draws", detail=problem or ""))
            runtime = "record"
        if not comparisons:
            return OpResult(
                status=SKIPPED,
                runtime=runtime,
                reason="nothing recorded for its outputs (no values, statistics or strides)",
                **base,
            )
        failed = [c for c in comparisons if not c.ok]
        shown = failed or comparisons
        methods = "+".join(sorted({c.method for c in comparisons}))
        abs_errs = [c.max_abs for c in shown if c.max_abs is not None]
        rel_errs = [c.max_rel for c in shown if c.max_rel is not None]
        return OpResult(
            status=FAILED if failed else CHECKED,
            method=methods,
            runtime=runtime,
            max_abs=max(abs_errs) if abs_errs else None,
            max_rel=max(rel_errs) if rel_errs else None,
            tolerance=tol_max or None,
            reason="; ".join(c.detail for c in failed if c.detail),
            **base,
        )

    def _judge_number(self, unit: OpUnit, base: dict[str, Any]) -> OpResult:
        """An op that handed a number to Python (``tensor.item()``): the number recorded in its
        attribute ``returned`` against its replayed input's one element, exactly when the input
        is exact, else within the input's error bound."""
        t = unit.op.inputs[0]
        rec = self.step.tensors[t]
        value = self.record(t) if self.use_record(t) else self.replay.env.get(self.names[t])
        if value is None or value is NOT_COMPUTED or np.asarray(value).size != 1:
            return OpResult(status=SKIPPED, reason=f"its input {self.names[t]} was not replayed", **base)
        returned = unit.op.attrs["returned"]
        number = _as_float(returned)
        if number is None:
            return OpResult(
                status=SKIPPED,
                reason=f"op {unit.op.index} {unit.op.name}: its attribute 'returned' "
                f"({reprlib.repr(returned)}) is not a number a float64 holds; nothing to compare",
                **base,
            )
        exact = self.use_record(t) or self.replay.exact.get(t, False)
        tol = 0.0 if exact else max(self.err.get(t, 0.0), tolerance(rec.dtype))
        got = np.asarray(value).reshape(()).astype(np.float64)
        c = compare_values(got, np.asarray(number), rec.dtype, tol, exact)
        return OpResult(
            status=CHECKED if c.ok else FAILED,
            method="number",
            runtime="record" if self.use_record(t) else "onnxruntime",
            max_abs=c.max_abs,
            max_rel=c.max_rel,
            tolerance=tol or None,
            reason=c.detail,
            **base,
        )

    def _magnitude(self, unit: OpUnit, name: str) -> np.ndarray | None:
        """Per element of output ``name``: the size of the terms it was computed from (sum|x|,
        sum|a||b|; :mod:`replayer.check.magnitude`), or ``None`` for ops it does not apply to.
        Computed only for an output that failed against its own scale: most never need it."""
        if not unit.standard or unit.exact or not linear(unit.nodes):
            return None
        if unit.op.index not in self._magnitudes:
            try:
                batch = self.replay.prepare([unit.op.index])
            except RunError:
                self._magnitudes[unit.op.index] = None
            else:
                self._magnitudes[unit.op.index] = term_magnitudes(batch)
        found = self._magnitudes[unit.op.index]
        return None if found is None else found.get(name)

    def what_if(self) -> tuple[list[Change], list[Change]]:
        changes, outputs = [], []
        consumed = {t for u in self.units.values() for t in u.op.inputs}
        for index in sorted(self.selected):
            op = self.units[index].op
            for t in op.outputs:
                rec = self.step.tensors[t]
                value = self.replay.env.get(self.names[t])
                if value is None or value is NOT_COMPUTED or value.size == 0:
                    continue
                new = np.asarray(value, dtype=np.float64)
                if rec.has_values:
                    old = np.asarray(rec.values(), dtype=np.float64)
                    rel = relative_change(new, old)
                    before, after = value_summary(old), value_summary(new)
                elif rec.stats is not None and rec.stats.mean is not None:
                    mean, std = rec.stats.mean, rec.stats.std or 0.0
                    scale = float(np.hypot(mean, std)) or 1.0
                    finite = new[np.isfinite(new)]
                    new_mean = float(finite.mean()) if finite.size else float("nan")
                    new_std = float(finite.std()) if finite.size else float("nan")
                    rel = max(abs(new_mean - mean), abs(new_std - std)) / scale
                    before, after = f"mean {mean:.6g}", f"mean {new_mean:.6g}"
                else:
                    continue
                change = Change(op.index, self.names[t], op.module, before, after, rel)
                changes.append(change)
                if t not in consumed:
                    outputs.append(change)
        changes.sort(key=lambda c: -c.rel_change if np.isfinite(c.rel_change) else -np.inf)
        return changes, outputs


def _as_float(value: object) -> float | None:
    """The attribute ``returned`` as a float64 (NaN and infinities too: a loss's ``item()``), or
    None for a hostile one: not a JSON number (a string, a list), or an int over float64's range."""
    if not isinstance(value, bool | int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def check_step(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "all",
    module: str | None = None,
    chain: bool = False,
    feeds: Mapping[str, np.ndarray] | None = None,
    progress: Progress | None = None,
) -> CheckReport:
    """Replay one step and compare every selected op with the record (module docstring)."""
    t0 = time.perf_counter()
    loaded, selected = load_selection(trace, step, rank, phase, module)
    names = value_names(loaded.tensors)
    fed = _resolve_feeds(loaded, names, feeds or {})
    chain = chain or bool(fed)
    checker = _Checker(loaded, selected, chain, fed, progress)
    checker.replay.run()
    layout = layout_checks(
        loaded, [checker.units[op.index] for op in selected], checker.names, checker.replay
    )
    judged = {index: checker.judge(index, layout) for index in sorted(checker.units)}
    results = [judged[op.index] for op in selected]
    report = CheckReport(
        loaded.step,
        loaded.rank,
        phase,
        "chain" if chain else "local",
        results,
        feeds=sorted(feeds or {}),
    )
    if fed:
        report.changes, report.outputs = checker.what_if()
    report.seconds = time.perf_counter() - t0
    return report
