"""The capture of one step: a ``TorchDispatchMode`` that turns every aten op into graph rows.

Identity: ``id(tensor)`` is reused within a step, so tensors are keyed weakly by object
(``WeakTensorKeyDictionary``).  Each entry holds the graph tensor (value) the object holds now.  An
op that writes a tensor (schema ``alias_info.is_write``: in-place, ``out=``, ``_foreach_*_`` which
return None, running statistics of batch norm) gives it a new value with the next version.  A write
also bumps a generation counter of the storage, so another object viewing the same storage is known
to be stale and is read as a new value from outside rather than linked to the wrong producer.

Every value that enters the step from outside (parameters, inputs, optimizer state) and every op
output that is not a pure view gets statistics; selected values are copied.  All of it stays on the
tensor's device until :meth:`StepCapture.finish`.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from recorder.convert import TORCH_TO_DTYPE, CudaEvent, TensorMap, json_value
from recorder.options import Options
from recorder.stats.cpu import SMALL_NUMEL, PendingStats, StatsCollector
from recorder.tracking import Names, PhaseTracker
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError
from tracefmt.model import Event, Phase, Role

__all__ = ["RawStep", "StepCapture"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
#: Ops whose output is uninitialized memory: statistics of it would be noise (and often NaN).
_UNINITIALIZED = frozenset(
    {
        "aten::empty",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::new_empty",
        "aten::new_empty_strided",
        "aten::empty_permuted",
    }
)

#: Ops that write arguments their schema does not mark as written: batch norm updates
#: ``running_mean`` and ``running_var`` (arguments 3 and 4) in place when ``training`` (argument 5).
_UNDECLARED_WRITES = {
    "aten::native_batch_norm": (5, frozenset({3, 4})),
    "aten::cudnn_batch_norm": (5, frozenset({3, 4})),
    "aten::miopen_batch_norm": (5, frozenset({3, 4})),
}
#: Roles of tensors the recorder has no name for yet.
_UNNAMED = (Role.ACTIVATION, Role.INPUT)


@dataclass(frozen=True)
class _OpInfo:
    """What the schema of one op overload says, computed once per overload."""

    name: str
    arg_names: tuple[str, ...]
    arg_index: dict[str, int]
    written: frozenset[int]
    view_returns: tuple[bool, ...]
    uninitialized: bool
    written_if: tuple[int, frozenset[int]] | None = None

    @classmethod
    def of(cls, func: Any) -> _OpInfo:
        schema = func._schema
        args = schema.arguments
        written = frozenset(
            i for i, a in enumerate(args) if a.alias_info is not None and a.alias_info.is_write
        )
        views = tuple(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        names = tuple(a.name for a in args)
        return cls(
            f"{schema.name}.{func._overloadname}",
            names,
            {n: i for i, n in enumerate(names)},
            written,
            views,
            schema.name in _UNINITIALIZED,
            _UNDECLARED_WRITES.get(schema.name),
        )


class _Slot:
    """The value a tensor object holds now, and the storage generation it was read at."""

    __slots__ = ("gen", "history", "key", "name", "role", "value", "version")

    def __init__(
        self, value: int, key: int | None, gen: int, version: int, role: Role, name: str | None
    ) -> None:
        self.value, self.key, self.gen, self.version = value, key, gen, version
        self.role, self.name = role, name
        self.history = [value]


@dataclass
class RawStep:
    """A captured step before it becomes a :class:`tracefmt.records.StepRecord`.

    Built on the training thread; turned into a record on the writer thread, so graph building
    stays off the training path.  It holds tensors only as value copies and 0-d results.
    """

    step: int
    ops: list[
        tuple[
            str,
            Phase,
            str,
            tuple[tuple[int, int, int], ...],
            tuple[int, ...],
            dict[str, Any] | None,
            str | None,
        ]
    ]
    tensors: list[tuple[DType, tuple[int, ...], tuple[int, ...], str, int, int, int, int]]
    roles: list[Role]
    names: list[str | None]
    host_ns: list[int]
    stats: PendingStats | None
    values: dict[int, torch.Tensor]
    cuda_times: list[tuple[int, Any, Any, int]]
    events: list[Event]
    scalars: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0
    duration: float = float("nan")
    dropped: int = 0
    values_ready: Any = None


class _Mode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self, capture: StepCapture) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._capture = capture

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.namespace != "aten":
            return func(*args, **(kwargs or {}))
        return self._capture.run_op(func, args, kwargs or {})


class StepCapture:
    """Records the ops of one step; :meth:`install` starts it, :meth:`finish` ends it."""

    _infos: ClassVar[dict[Any, _OpInfo]] = {}
    _active: ClassVar[StepCapture | None] = None

    def __init__(self, step: int, options: Options, names: Names) -> None:
        self.step = step
        self.options = options
        self.names = names
        self.tracker = PhaseTracker(names, on_tensor_named=self.name_tensor, on_compiled=self._compiled)
        self._objects = TensorMap()
        self._named = TensorMap()
        self._gens: dict[int, int] = {}
        self._ops: list[Any] = []
        self._tensors: list[Any] = []
        self._roles: list[Role] = []
        self._names: list[str | None] = []
        self._host_ns: list[int] = []
        self._cuda_times: list[tuple[int, Any, Any, int]] = []
        self._events: list[Event] = []
        self._values: dict[int, torch.Tensor] = {}
        self._tentative: list[tuple[int, str, str]] = []
        self._measured: set[int] = set()
        self._stats = StatsCollector(hist_bins=options.hist_bins) if options.stats else None
        self._failed = False
        self._compiled_seen = False
        self._devices: dict[torch.device, str] = {}
        self._t0 = time.perf_counter()
        self._wall = time.time()

    # -- naming -----------------------------------------------------------------------------
    def name_tensor(self, t: torch.Tensor, role: Role, name: str) -> None:
        """Give ``t`` (and every value it has held in this step) a role and a name."""
        self._named[t] = (role, name)
        slot = self._objects.get(t)
        if slot is not None and slot.name != name:
            slot.role, slot.name = role, name
            for i in slot.history:
                self._roles[i], self._names[i] = role, name

    def _compiled(self, module: torch.nn.Module) -> None:
        if not self._compiled_seen:
            self._compiled_seen = True
            self._events.append(
                Event(
                    "compile_bypassed",
                    f"{type(module).__name__} is torch.compile'd; under the recorder it ran eagerly, "
                    "so this step's graph shows the eager aten ops, not the compiled kernels.",
                )
            )

    # -- lifecycle --------------------------------------------------------------------------
    def install(self) -> Any:
        """Enter hooks and the dispatch mode; returns an ``ExitStack`` that removes them.

        One capture at a time per process: the module and optimizer hooks are global, and two
        nested dispatch modes would each record the other's bookkeeping ops.
        """
        active = StepCapture._active
        if active is not None:
            raise TraceError(
                f"Another recorder is capturing step {active.step} in this process; "
                "two recorders cannot capture the same steps. Give them schedules "
                "that do not overlap, or record with one recorder."
            )
        StepCapture._active = self
        stack = ExitStack()
        stack.callback(setattr, StepCapture, "_active", None)
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
        duration = time.perf_counter() - self._t0
        n = len(self._tensors)
        selection = self.options.values
        for index, module, op in self._tentative:
            if selection is not None and not selection.matches(self._roles[index].label, module, op):
                del self._values[index]
        self._tentative = []
        stats = self._stats.finish(n) if self._stats is not None else None
        ready = None
        if any(v.device.type == "cuda" for v in self._values.values()):
            ready = CudaEvent()
            ready.record()
        raw = RawStep(
            self.step,
            self._ops,
            self._tensors,
            self._roles,
            self._names,
            self._host_ns,
            stats,
            self._values,
            self._cuda_times,
            self._events,
            wall_time=self._wall,
            duration=duration,
            values_ready=ready,
        )
        self._objects = TensorMap()
        self._named = TensorMap()
        self._values = {}
        self._stats = None
        return raw

    # -- values -----------------------------------------------------------------------------
    @staticmethod
    def _storage_key(t: torch.Tensor) -> int | None:
        """The address of ``t``'s storage (without building a storage object)."""
        try:
            ptr = int(t.data_ptr() - t.storage_offset() * t.element_size())
        except (RuntimeError, NotImplementedError):
            return None
        return ptr or None

    def _new_value(
        self,
        t: torch.Tensor,
        producer: int,
        slot_no: int,
        version: int,
        role: Role,
        name: str | None,
        key: int | None,
        slot: _Slot | None,
    ) -> int:
        """A new graph tensor for the value ``t`` holds now; ``slot``: ``t``'s slot, if any."""
        device = self._devices.get(t.device)
        if device is None:
            device = self._devices[t.device] = str(t.device)
        index = len(self._tensors)
        self._tensors.append(
            (
                TORCH_TO_DTYPE[t.dtype],
                tuple(t.shape),
                t.stride(),
                device,
                producer,
                slot_no,
                version,
                t.storage_offset(),
            )
        )
        self._roles.append(role)
        self._names.append(name)
        if slot is None:
            slot = _Slot(index, key, self._gens.get(key, 0) if key else 0, version, role, name)
            self._objects[t] = slot
        else:
            slot.value, slot.key, slot.version = index, key, version
            slot.gen = self._gens.get(key, 0) if key else 0
            slot.role, slot.name = role, name
            slot.history.append(index)
        return index

    def _observe(
        self, index: int, t: torch.Tensor, module: str, op: str, same_bytes: int | None = None
    ) -> None:
        """Statistics and (if selected) a copy of value ``index``, whose contents are ``t`` now.

        ``same_bytes``: an earlier value already measured that holds exactly these bytes in the
        same order; its statistics are reused.
        """
        if self._stats is not None:
            if same_bytes is not None and same_bytes in self._measured:
                self._stats.alias(index, same_bytes)
            else:
                self._stats.add(index, t)
            self._measured.add(index)
        selection = self.options.values
        if selection is None:
            return
        role = self._roles[index]
        selected = selection.matches(role.label, module, op)
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

    def _input(self, t: torch.Tensor, module: str, op: str) -> int | None:
        if t.dtype not in TORCH_TO_DTYPE:
            return None
        slot = self._objects.get(t)
        if slot is not None and (slot.key is None or self._gens.get(slot.key, 0) == slot.gen):
            return int(slot.value)
        version = 0 if slot is None else slot.version + 1
        named = self._named.get(t)
        role, name = (
            named
            if named is not None
            else ((slot.role, slot.name) if slot is not None else (Role.INPUT, None))
        )
        index = self._new_value(t, -1, 0, version, role, name, self._storage_key(t), slot)
        self._observe(index, t, module, op)
        return index

    # -- the op -----------------------------------------------------------------------------
    def run_op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one aten op and record it (the body of ``__torch_dispatch__``)."""
        if self._failed:
            return func(*args, **kwargs)
        try:
            before = self._before(func, args, kwargs)
        except Exception as e:
            self._fail(e)
            return func(*args, **kwargs)
        t0 = time.perf_counter_ns()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter_ns() - t0
        try:
            self._after(before, out, elapsed)
        except Exception as e:
            self._fail(e)
        return out

    def _fail(self, e: Exception) -> None:
        self._failed = True
        where = "".join(traceback.format_exception_only(type(e), e)).strip()
        self._events.append(
            Event(
                "recorder_error",
                f"The recorder stopped capturing this step after op {len(self._ops)}: {where}",
            )
        )

    def _before(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        info = self._infos.get(func)
        if info is None:
            info = self._infos[func] = _OpInfo.of(func)
        tracker = self.tracker
        node = torch._C._current_autograd_node()
        tensors: list[tuple[torch.Tensor, int, int]] = []
        attrs: dict[str, Any] = {}
        names = info.arg_names
        for pos, a in enumerate(args):
            self._collect(a, pos, names[pos] if pos < len(names) else f"arg{pos}", tensors, attrs)
        for key, a in kwargs.items():
            self._collect(a, info.arg_index.get(key, -1), key, tensors, attrs)
        phase, module = tracker.phase(node, lambda: any(t.requires_grad for t, _, _ in tensors))
        name = info.name
        inputs = []
        for t, pos, item in tensors:
            v = self._input(t, module, name)
            if v is not None:
                inputs.append((v, pos, item))
        written_pos = info.written
        if info.written_if is not None:
            flag, extra = info.written_if
            if len(args) > flag and args[flag] is True:
                written_pos = written_pos | extra
        written = [t for t, pos, _ in tensors if pos in written_pos]
        grad_of = None
        if node is not None and node._sequence_nr() == 2**64 - 1:
            grad_of = tracker.accumulate_grad_param(node)
        source = self._source() if self.options.source else None
        cuda = None
        if tensors and tensors[0][0].is_cuda:
            start, end = CudaEvent(enable_timing=True), CudaEvent(enable_timing=True)
            start.record()
            cuda = (start, end, torch.cuda.memory_allocated())
        return (info, phase, module, inputs, written, attrs, tensors, grad_of, source, cuda)

    @staticmethod
    def _collect(
        a: Any, pos: int, name: str, tensors: list[tuple[torch.Tensor, int, int]], attrs: dict[str, Any]
    ) -> None:
        if isinstance(a, torch.Tensor):
            tensors.append((a, pos, -1))
        elif isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
            for item, x in enumerate(a):
                if isinstance(x, torch.Tensor):
                    tensors.append((x, pos, item))
        else:
            attrs[name] = json_value(a)

    def _after(self, before: tuple[Any, ...], out: Any, elapsed: int) -> None:
        info, phase, module, inputs, written, attrs, tensors, grad_of, source, cuda = before
        op_index = len(self._ops)
        if cuda is not None:
            cuda[1].record()
            self._cuda_times.append(
                (op_index, cuda[0], cuda[1], torch.cuda.memory_allocated() - cuda[2])
            )
        returned: list[tuple[torch.Tensor, bool]] = []
        if isinstance(out, torch.Tensor):
            returned.append((out, bool(info.view_returns and info.view_returns[0])))
        elif isinstance(out, (tuple, list)):
            views = info.view_returns
            for i, o in enumerate(out):
                if isinstance(o, torch.Tensor):
                    returned.append(
                        (o, views[i] if i < len(views) and len(views) > 1 else bool(views and views[0]))
                    )
        if written:
            returned_ids = {id(o) for o, _ in returned}
            returned.extend((w, False) for w in written if id(w) not in returned_ids)
            written_ids = {id(w) for w in written}
        else:
            written_ids = set()
        input_ids = {id(t) for t, _, _ in tensors}
        outputs = []
        for slot_no, (o, is_view) in enumerate(returned):
            if o.dtype not in TORCH_TO_DTYPE:
                continue
            previous = self._objects.get(o)
            key = self._storage_key(o)
            is_written = id(o) in written_ids
            if is_written and key is not None:
                self._gens[key] = self._gens.get(key, 0) + 1
            if previous is not None and id(o) in input_ids:
                # A new version (written) or the same object handed back (alias): keep its name.
                version = previous.version + (1 if is_written else 0)
                role, name = previous.role, previous.name
                observe = is_written or self.options.views
            else:
                version = 0
                named = self._named.get(o)
                if named is not None:
                    role, name = named
                elif grad_of is not None:
                    role, name = Role.GRADIENT, f"{grad_of}.grad"
                    self._named[o] = (role, name)
                else:
                    role, name = Role.ACTIVATION, None
                # A pure view repeats its base's numbers; a named one (a gradient handed over by
                # AccumulateGrad's detach) is what the user asks about, so it gets its own.
                observe = (
                    not is_view or self.options.views or role is not Role.ACTIVATION
                ) and not info.uninitialized
            index = self._new_value(o, op_index, slot_no, version, role, name, key, previous)
            outputs.append(index)
            if observe:
                same = None
                if not is_written and key is not None and o.numel() > SMALL_NUMEL:
                    same = self._same_bytes(o, tensors)
                self._observe(index, o, module, info.name, same)
        self._ops.append(
            (info.name, phase, module, tuple(inputs), tuple(outputs), attrs or None, source)
        )
        self._host_ns.append(elapsed)

    def _same_bytes(self, o: torch.Tensor, tensors: list[tuple[torch.Tensor, int, int]]) -> int | None:
        """The value of an input whose bytes ``o`` shares exactly (``detach``, ``_unsafe_view``,
        ``alias``, a reshape of a contiguous tensor), if any."""
        ptr = o.data_ptr()
        for t, _, _ in tensors:
            if (
                t.data_ptr() == ptr
                and t.dtype == o.dtype
                and t.numel() == o.numel()
                and t.is_contiguous()
                and o.is_contiguous()
            ):
                slot = self._objects.get(t)
                if slot is not None:
                    return int(slot.value)
        return None

    @staticmethod
    def _source() -> str | None:
        """``file:line`` of the innermost caller outside torch and the recorder."""
        frame: Any = sys._getframe(3)
        while frame is not None:
            path = frame.f_code.co_filename
            if not (path.startswith(_TORCH_DIR) or path.startswith(_HERE) or path.startswith("<")):
                return f"{path}:{frame.f_lineno}"
            frame = frame.f_back
        return None
