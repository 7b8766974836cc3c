"""Replaying mapped ops in as few runtime calls as their dependencies allow.

Ops whose nodes are all standard run in ONNX Runtime, ops exported as custom nodes in the
reference evaluator.  Each op gets a *stage*: ONNX Runtime stages are even, reference stages odd,
and an op's stage is the smallest of its kind that comes after the stages of the ops it reads
from (the same stage for a producer of the same kind).  One stage is one runtime call (per
:data:`CHUNK` ops), so a step costs about as many sessions as the longest alternating chain of
standard and custom ops, not one per op.  A batch that fails is re-run op by op (an op ONNX
Runtime refuses gets a second try in the reference evaluator), so one odd op costs only itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
import onnx

from replayer.check.runtime import RunError, run_ort, run_reference
from replayer.export.mapping import OpUnit
from replayer.export.ops import reference_for
from tracefmt.model import TensorMeta
from tracefmt.progress import ProgressFn
from tracefmt.reader import Step

ORT, REF, NONE = "ort", "ref", "none"
#: The most ops one runtime call gets: binding inputs costs time quadratic in their number.
CHUNK = 2048
#: Suffix of a node input fed from the record rather than from its producer's replay.
RECORD_SUFFIX = "@rec"


class Batch(NamedTuple):
    """What one runtime call gets: nodes, their initializers, the input arrays by value name,
    the outputs to return and their recorded metadata."""

    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    feeds: dict[str, np.ndarray]
    outputs: list[str]
    metas: dict[str, TensorMeta]


def unit_kind(unit: OpUnit) -> str:
    if unit.standard:
        return ORT
    return REF if reference_for(unit.op.name) is not None else NONE


class Replay:
    """The replay of a set of mapped ops (``units`` by op index)."""

    def __init__(
        self,
        step: Step,
        units: Mapping[int, OpUnit],
        names: list[str],
        use_record: Callable[[int], bool],
        record: Callable[[int], np.ndarray],
        progress: ProgressFn | None = None,
    ) -> None:
        self.step = step
        self.units = units
        self.names = names
        self.by_name = {n: i for i, n in enumerate(names)}
        self.use_record = use_record
        self._record = record
        self.progress = progress
        self.env: dict[str, np.ndarray] = {}
        self.exact: dict[int, bool] = {}
        self.problems: dict[int, str] = {}
        self.stages: dict[int, int] = {}
        #: What numpy references reported: ``reduction:<node>`` and ``scale:<output>``.
        self.notes: dict[str, float] = {}
        self._cache: dict[int, np.ndarray] = {}

    def record(self, t: int) -> np.ndarray:
        value = self._cache.get(t)
        if value is None:
            value = self._cache[t] = self._record(t)
        return value

    def plan(self) -> None:
        """Assign stages; ops that cannot run get a reason in ``problems``."""
        producer: dict[int, int] = {}
        for index in sorted(self.units):
            unit = self.units[index]
            kind = unit_kind(unit)
            need = 0
            problem = None
            for t in unit.op.inputs:
                if self.use_record(t):
                    continue
                p = producer.get(t)
                if p is None:
                    source = self.step.tensors[t].meta.producer
                    if source is not None and source in self.units:
                        problem = (
                            f"input {self.names[t]} comes from op {source} "
                            f"({self.step.ops[source].name}), which could not be replayed"
                        )
                    else:
                        problem = f"input {self.names[t]} was not recorded"
                    break
                same = unit_kind(self.units[p]) == kind
                need = max(need, self.stages[p] + (0 if same else 1))
            if problem is None and kind == NONE:
                problem = f"no numpy reference for the custom op {unit.op.name}" + (
                    f" ({unit.why_custom})" if unit.why_custom else ""
                )
            if problem is not None:
                self.problems[index] = problem
                continue
            if not unit.op.outputs:
                continue
            parity = 0 if kind == ORT else 1
            self.stages[index] = need + (need % 2 != parity)
            for t in unit.op.outputs:
                producer[t] = index

    def run(self) -> None:
        self.plan()
        by_stage: dict[int, list[int]] = {}
        for index, stage in self.stages.items():
            by_stage.setdefault(stage, []).append(index)
        done, total = 0, len(self.units)
        for stage in sorted(by_stage):
            batch = sorted(by_stage[stage])
            for start in range(0, len(batch), CHUNK):  # in order: later chunks read earlier ones
                chunk = batch[start : start + CHUNK]
                self._run_batch(chunk, ORT if stage % 2 == 0 else REF)
                done += len(chunk)
                if self.progress is not None:
                    self.progress(done, total)
        if self.progress is not None:
            self.progress(total, total)

    def prepare(self, batch: list[int]) -> Batch:
        """The nodes of the ops ``batch`` (by index) with their inputs: read from the record,
        or from the replay of their producers (which must have run)."""
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        feeds: dict[str, np.ndarray] = {}
        outputs: list[str] = []
        metas: dict[str, TensorMeta] = {}
        made: set[str] = set()
        for index in batch:
            unit = self.units[index]
            recorded = dict(unit.recorded_inputs)
            local = {o for n in unit.nodes for o in n.output}
            for node in unit.nodes:
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                for k, name in enumerate(copy.input):
                    if not name:
                        continue
                    if name in recorded:
                        feeds[name] = self.record(recorded[name])
                        continue
                    t = self.by_name.get(name)
                    if t is None or name in local:
                        continue  # an initializer or an intermediate value of the op
                    if self.use_record(t):
                        copy.input[k] = name + RECORD_SUFFIX
                        feeds[copy.input[k]] = self.record(t)
                    elif name in made:
                        continue
                    elif name in self.env:
                        feeds[name] = self.env[name]
                    else:
                        raise RunError(f"input {name} is not available (its producer could not run)")
                nodes.append(copy)
            inits.extend(unit.initializers)
            for t in unit.op.outputs:
                outputs.append(self.names[t])
                metas[self.names[t]] = self.step.tensors[t].meta
            made.update(local)
        return Batch(nodes, inits, feeds, outputs, metas)

    def _run_batch(self, batch: list[int], kind: str) -> None:
        try:
            b = self.prepare(batch)
            if kind == ORT:
                results = run_ort(b.nodes, b.initializers, b.feeds, b.outputs)
            else:
                results = run_reference(b.nodes, b.initializers, b.feeds, b.outputs, b.metas, self.notes)
        except RunError as e:
            if len(batch) > 1:
                for index in batch:
                    self._run_batch([index], kind)
                return
            if kind == ORT:  # a second opinion: the reference evaluator runs standard ops too
                try:
                    b = self.prepare(batch)
                    results = run_reference(
                        b.nodes, b.initializers, b.feeds, b.outputs, b.metas, self.notes
                    )
                except RunError as e2:
                    self.problems[batch[0]] = f"could not run: {e}; {e2}"
                    return
            else:
                self.problems[batch[0]] = f"could not run: {e}"
                return
        self.env.update(results)
        for index in batch:
            unit = self.units[index]
            exact = unit.exact and all(
                self.use_record(t) or self.exact.get(t, False) for t in unit.op.inputs
            )
            for t in unit.op.outputs:
                self.exact[t] = exact
