"""The capture of one step: a ``TorchDispatchMode`` that turns every aten op into graph rows.

Each aten op is read twice: before it runs (:meth:`StepCapture._before`: its phase and module, its
tensor inputs resolved to graph tensors, its other arguments as JSON data) and after
(:meth:`StepCapture._after`: its outputs, and the tensors it wrote, become new graph tensors).
Which graph tensor a tensor object holds is :mod:`recorder.identity`'s business; what an op's
schema says, :mod:`recorder.opinfo`'s.

Every value that enters the step from outside (parameters, inputs, optimizer state) and every op
output that is not a pure view gets statistics; selected values are copied.  All of it stays on the
tensor's device until :meth:`StepCapture.finish`.
"""

from __future__ import annotations

import time
import traceback
from contextlib import ExitStack
from typing import Any

import torch
from torch._ops import OpOverload
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass

from recorder.captured import (
    CudaStart,
    CudaTiming,
    OpCall,
    OpRow,
    RawStep,
    claim_capture,
    compile_bypassed,
    recorder_error,
    release_capture,
)
from recorder.collectives import COMM_NAMESPACES, OTHER, CommTracker, storage_holders
from recorder.convert import (
    TORCH_TO_DTYPE,
    ArgTensor,
    CudaEvent,
    DeviceEvent,
    collect_arg,
    held_storages,
    json_value,
    storage_extent,
)
from recorder.identity import TensorTable
from recorder.opinfo import RECORDED_NAMESPACES, OpInfo
from recorder.options import Options
from recorder.stats.cpu import SMALL_NUMEL, StatsCollector
from recorder.tracking import ACCUMULATE_GRAD_SEQ, Names, PhaseTracker, source_location
from tracefmt.model import Event, Role

__all__ = ["StepCapture"]

#: Roles of tensors the recorder has no name for yet.
_UNNAMED = (Role.ACTIVATION, Role.INPUT)
_ACTIVATION = Role.ACTIVATION
#: Builds the named rows on the per-op path: a ``NamedTuple``'s own ``__new__`` is Python code
#: costing about seven plain tuples (300 ns), ``tuple.__new__(Row, fields)`` about three.  It
#: does not check the fields' types, so each row is built in one place only.
_new = tuple.__new__

_PLAIN = (torch.Tensor, torch.nn.Parameter)


class _Mode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, capture: StepCapture) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._capture = capture

    def __torch_dispatch__(
        self,
        func: OpOverload,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        namespace = func.namespace
        if namespace in RECORDED_NAMESPACES:
            return self._capture.run_op(func, args, kwargs or {})
        if namespace in COMM_NAMESPACES:  # c10d, functional collectives
            return self._capture.run_comm(func, args, kwargs or {})
        return func(*args, **(kwargs or {}))


class StepCapture:
    """Records the ops of one step; :meth:`install` starts it, :meth:`finish` ends it."""

    def __init__(self, step: int, options: Options, names: Names) -> None:
        self.step = step
        self.options = options
        self.names = names
        self.tracker = PhaseTracker(names, on_tensor_named=self.name_tensor, on_compiled=self._compiled)
        self._table = TensorTable()
        self._comms = CommTracker()
        self._ops: list[OpRow] = []
        self._host_ns: list[int] = []
        self._host_start_ns: list[int] = []  # after _t0_ns, along _host_ns
        self._mem_bytes: list[int] = []  # along _host_ns: see _after
        self._cuda_times: list[CudaTiming] = []
        self._events: list[Event] = []
        self._values: dict[int, torch.Tensor] = {}
        self._tentative: list[tuple[int, str, str]] = []
        self._measured: set[int] = set()
        self._stats = StatsCollector(hist_bins=options.hist_bins) if options.stats else None
        self._failed = False
        self._compiled_seen = False
        # the step's start: ops' starts and the duration count from it, on one clock
        self._t0_ns = time.perf_counter_ns()
        self._wall = time.time()

    # -- naming -----------------------------------------------------------------------------
    def name_tensor(self, t: torch.Tensor, role: Role, name: str) -> None:
        """Give ``t`` (and every value it has held in this step) a role and a name."""
        self._table.name(t, role, name)

    def _compiled(self, module: torch.nn.Module) -> None:
        if not self._compiled_seen:
            self._compiled_seen = True
            self._events.append(compile_bypassed(module))

    # -- lifecycle --------------------------------------------------------------------------
    def install(self) -> ExitStack:
        """Enter hooks and the dispatch mode; returns an ``ExitStack`` that removes them.

        One capture at a time per process: the module and optimizer hooks are global, and two
        nested dispatch modes would each record the other's bookkeeping ops.
        """
        claim_capture(self)
        stack = ExitStack()
        stack.callback(release_capture, self)
        try:
            stack.enter_context(self.tracker.install())
            for t, role, name in self.names.named_tensors():
                self.name_tensor(t, role, name)
            stack.enter_context(_Mode(self))
        except BaseException:
            stack.close()
            raise
        return stack

    def finish(self) -> RawStep:
        """End the capture: launch batched statistics and return the step; drops every reference
        this capture held to the step's tensors (their copies travel in the result)."""
        duration = (time.perf_counter_ns() - self._t0_ns) / 1e9  # after every op's end
        table = self._table
        selection = self.options.values
        for index, module, op in self._tentative:
            if selection is not None and not selection.matches(table.roles[index].label, module, op):
                del self._values[index]
        self._tentative = []
        stats = self._stats.finish(len(table.rows)) if self._stats is not None else None
        ready: DeviceEvent | None = None
        if any(v.device.type == "cuda" for v in self._values.values()):
            ready = CudaEvent()
            ready.record()
        raw = RawStep(
            self.step,
            self._ops,
            table.rows,
            table.roles,
            table.names,
            self._host_ns,
            stats,
            self._values,
            self._cuda_times,
            self._events,
            wall_time=self._wall,
            duration=duration,
            values_ready=ready,
            process_groups=self._comms.process_groups,
            host_start_ns=self._host_start_ns,
            mem_bytes=self._mem_bytes,
        )
        self._table = TensorTable()
        self._values = {}
        self._stats = None
        return raw

    # -- values -----------------------------------------------------------------------------
    def _observe(
        self, index: int, t: torch.Tensor, module: str, op: str, same_bytes: int | None = None
    ) -> None:
        """Statistics and (if selected) a copy of value ``index``, whose contents are ``t`` now.

        ``same_bytes``: an earlier value already measured that holds exactly these bytes in the
        same order; its statistics are reused.  A tensor subclass with no storage of its own (a
        DTensor, an ``AsyncCollectiveTensor``) is left unmeasured.
        """
        if type(t) not in _PLAIN and is_traceable_wrapper_subclass(t):
            return
        if self._stats is not None:
            if same_bytes is not None and same_bytes in self._measured:
                self._stats.alias(index, same_bytes)
            else:
                self._stats.add(index, t)
            self._measured.add(index)
        selection = self.options.values
        if selection is None:
            return
        role = self._table.roles[index]
        selected = selection.matches(role.label, module, op, self._table.rows[index].producer < 0)
        if (
            not selected
            and role in _UNNAMED
            and self.tracker.fresh_optimizer_state
            and selection.matches(Role.OPTIMIZER_STATE.label, module, op)
        ):
            # Optimizer state made in this step is named only after the optimizer step: copy
            # it now, keep the copy in finish() if the name given by then is selected.
            selected = True
            self._tentative.append((index, module, op))
        if selected:
            copy = t.detach()
            if copy.device.type == "cuda":
                host = torch.empty(copy.shape, dtype=copy.dtype, pin_memory=True)
                self._values[index] = host.copy_(copy, non_blocking=True)
            else:
                self._values[index] = copy.clone(memory_format=torch.contiguous_format)

    def _read_input(self, t: torch.Tensor, module: str, info: OpInfo, pos: int) -> int | None:
        """A new value for input ``t`` (argument ``pos``) of ``info``, read from outside the step
        (None: a dtype the trace cannot hold), unless ``t`` is blank (:mod:`recorder.identity`)
        and the op does not read its bytes."""
        if t.dtype not in TORCH_TO_DTYPE:
            return None
        blank = self._table.blank_value(t) if info.shape_only or pos in info.overwrites else None
        if blank is not None:
            return blank
        index = self._table.read(t)
        self._observe(index, t, module, info.name)
        return index

    # -- the op -----------------------------------------------------------------------------
    def run_op(self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one aten op and record it (the body of ``__torch_dispatch__``)."""
        if self._failed:
            return func(*args, **kwargs)
        try:
            call = self._before(func, args, kwargs)
        except Exception as e:
            self._fail(e)
            return func(*args, **kwargs)
        t0 = time.perf_counter_ns()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter_ns() - t0
        try:
            self._after(call, out, t0, elapsed)
        except Exception as e:
            self._fail(e)
        return out

    def run_comm(self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one communication op and record it with its ``"c10d"`` attribute; its written
        values are measured only once final (see :mod:`recorder.collectives`)."""
        if self._failed:
            return func(*args, **kwargs)
        try:
            call = self._before(func, args, kwargs)
            spec = call.info.comm or OTHER
            c10d = self._comms.describe(spec, call.info.arg_names, args, kwargs, call.attrs)
        except Exception as e:
            self._fail(e)
            return func(*args, **kwargs)
        t0 = time.perf_counter_ns()
        out = func(*args, **kwargs)
        done = self._comms.complete(spec, c10d, args, out)  # waits on a collective: in its time
        elapsed = time.perf_counter_ns() - t0
        try:
            self._events.extend(done.events(call.info.name, len(self._ops)))
            self._after(call, out, t0, elapsed, done.final)
        except Exception as e:
            self._fail(e)
        return out

    def _fail(self, e: Exception) -> None:
        self._failed = True
        where = "".join(traceback.format_exception_only(type(e), e)).strip()
        self._events.append(recorder_error(len(self._ops), where))

    def _before(self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> OpCall:
        info = OpInfo.cached(func)
        tracker = self.tracker
        node = torch._C._current_autograd_node()
        tensors: list[ArgTensor] = []
        attrs: dict[str, Any] = {}
        names = info.arg_names
        for pos, a in enumerate(args):
            if isinstance(a, torch.Tensor):  # the common case, without a call
                tensors.append((a, pos, -1))
            else:
                collect_arg(a, pos, names[pos] if pos < len(names) else f"arg{pos}", tensors, attrs)
        for key, a in kwargs.items():
            collect_arg(a, info.arg_index.get(key, -1), key, tensors, attrs)
        phase, module = tracker.phase(node, lambda: any(t.requires_grad for t, _, _ in tensors))
        inputs = []
        current = self._table.current
        skip = info.write_only  # an all-gather's output buffers: written, never read
        for t, pos, item in tensors:
            if skip and pos in skip:
                continue
            v = current(t)
            if v is None:
                v = self._read_input(t, module, info, pos)
            if v is not None:
                inputs.append((v, pos, item))
        written_pos = info.written
        if info.written_if is not None:
            flag, extra = info.written_if
            if len(args) > flag and args[flag] is True:
                written_pos = written_pos | extra
        written = [t for t, pos, _ in tensors if pos in written_pos] if written_pos else []
        grad_of = None
        if info.comm is not None:
            # a bucket all-reduce under AccumulateGrad writes the bucket, not a gradient
            written = storage_holders(written)
        elif node is not None and node._sequence_nr() == ACCUMULATE_GRAD_SEQ:
            grad_of = tracker.accumulate_grad_param(node)
        source = source_location() if self.options.source else None
        cuda = None
        if tensors:
            first, _, _ = tensors[0]
            if first.is_cuda:
                start, end = CudaEvent(enable_timing=True), CudaEvent(enable_timing=True)
                start.record()
                cuda = CudaStart(start, end, torch.cuda.memory_allocated())
        return _new(
            OpCall, (info, phase, module, inputs, written, attrs, tensors, grad_of, source, cuda)
        )

    def _after(self, call: OpCall, out: object, t0: int, elapsed: int, final: bool = True) -> None:
        """Record the op ``call`` after it ran from ``t0`` (``perf_counter_ns``) for ``elapsed``
        ns; ``final``: its written values are final (else left unmeasured: a point-to-point op,
        a functional collective before its wait)."""
        # Unpacked at once (mypy checks each field's type): cheaper than ten attribute reads.
        info, phase, module, inputs, written, attrs, tensors, grad_of, source, cuda = call
        op_index = len(self._ops)
        fresh = 0  # memory: a CUDA op's allocator delta, else the bytes of new storages
        held: set[int] | None = None  # the storages of the op's arguments, once needed
        if cuda is not None:
            cuda.end.record()
            memory = torch.cuda.memory_allocated() - cuda.mem_before
            self._cuda_times.append(CudaTiming(op_index, cuda.start, cuda.end, memory))
            fresh = -1
        returned: list[tuple[torch.Tensor, bool]] = []  # (output, is a view)
        if isinstance(out, torch.Tensor):
            returned.append((out, bool(info.view_returns and info.view_returns[0])))
        elif isinstance(out, (tuple, list)):
            for i, o in enumerate(out):
                if isinstance(o, torch.Tensor):
                    returned.append((o, info.view_of_return(i)))
        elif self.options.values is not None and isinstance(out, (bool, int, float)):  # item()
            attrs = {**(attrs or {}), "returned": json_value(out)}
        if written:
            returned_ids = {id(o) for o, _ in returned}
            returned.extend((w, False) for w in written if id(w) not in returned_ids)
            written_ids = {id(w) for w in written}
        else:
            written_ids = set()
        table = self._table
        views = self.options.views
        outputs: list[int] = []
        try:
            for slot_no, (o, is_view) in enumerate(returned):
                is_written = id(o) in written_ids
                aliased = is_written or any(t is o for t, _, _ in tensors)
                if fresh >= 0 and not (is_view or aliased):
                    held = held_storages(tensors) if held is None else held
                    storage = storage_extent(o)
                    if storage is not None and storage[0] not in held:
                        held.add(storage[0])
                        fresh += storage[1]
                if o.dtype not in TORCH_TO_DTYPE:
                    continue
                previous = table.slot(o)
                # A new version (written) or the same object handed back (alias): keeps its name.
                again = previous is not None and aliased
                slot = table.write(o, previous, op_index, slot_no, is_written, again, grad_of)
                outputs.append(slot.value)
                if again:
                    observe = is_written or views
                elif info.uninitialized:  # blank bytes: their statistics would be noise
                    observe = False
                    table.blank(o, slot)
                else:
                    # A pure view repeats its base's numbers; a named one (a gradient handed over by
                    # AccumulateGrad's detach) is what the user asks about, so it gets its own.
                    observe = not is_view or views or slot.role is not _ACTIVATION
                if observe and final:
                    same = None
                    if not is_written and slot.key is not None and o.numel() > SMALL_NUMEL:
                        same = table.same_bytes(o, tensors)
                    self._observe(slot.value, o, module, info.name, same)
        finally:  # outputs already in the table name this op as their producer: it goes in
            row = (info.name, phase, module, tuple(inputs), tuple(outputs), attrs or None, source)
            self._ops.append(_new(OpRow, row))
            self._host_ns.append(elapsed)
            self._host_start_ns.append(t0 - self._t0_ns)
            self._mem_bytes.append(fresh)
