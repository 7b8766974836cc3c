"""The capture of one step by the native engine: what :class:`recorder.capture.StepCapture`
does, with the per-op work in C++ (``capture.cpp``, loaded by :mod:`recorder.engine.extension`).

Python keeps what is per module, per named tensor or per step: the module and optimizer hooks
(:class:`recorder.tracking.PhaseTracker`, which tells the engine of every module entry and
exit), the names of parameters, gradients and optimizer state, and the writer-side conversion
of the engine's rows into the named rows :mod:`recorder.assemble` reads.  The engine calls back
into Python only for what it cannot finish alone (see ``capture.cpp``'s header), each call made
with the engine's dispatch key excluded, so the callbacks' own torch ops are not recorded.
"""

from __future__ import annotations

import enum
import itertools
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import ModuleType
from typing import Any, ClassVar, NamedTuple, cast

import numpy as np
import torch

from recorder.captured import (
    OpRow,
    RawStep,
    TensorRow,
    claim_capture,
    compile_bypassed,
    recorder_error,
    release_capture,
)
from recorder.collectives import COMM_NAMESPACES, OTHER, CommSpec, CommTracker, Completion
from recorder.convert import TORCH_TO_DTYPE, json_value
from recorder.opinfo import RECORDED_NAMESPACES, OpInfo
from recorder.options import Options
from recorder.stats.common import ALL_FLAGS, FINGERPRINT, SMALL_NUMEL, NativeRows
from recorder.stats.cpu import StatsCollector
from recorder.stats.native import kernel_address
from recorder.tracking import Names, PhaseTracker
from tracefmt.errors import TraceError
from tracefmt.model import Event, Phase, Role

__all__ = ["NativeCapture", "OpFacts", "Written"]

_PHASES = list(Phase)
_ROLES = list(Role)


class OpFacts(NamedTuple):
    """What the engine needs of an op overload's schema, once per overload (capture.cpp's
    ``OpMeta``, which reads these fields by name)."""

    record: bool  #: recorded (aten::, fsdp::, and communication ops), else run through
    comm: bool  #: a communication op (recorder.collectives)
    written: list[int]  #: argument positions it writes
    write_only: list[int]  #: written arguments it does not read
    written_if: tuple[int, list[int]] | None  #: (flag argument, positions written when True)
    view_returns: list[bool]  #: per return: a view of an argument
    uninitialized: bool  #: its output is uninitialized memory
    #: it reads its tensor arguments' shapes, not their bytes (a view, ``empty_like``)
    shape_only: bool = False
    overwrites: tuple[int, ...] = ()  #: written arguments whose bytes it overwrites unread


_PASS_THROUGH = OpFacts(False, False, [], [], None, [], False)


def _describe(name: str, overload: str) -> OpFacts:
    """The :class:`OpFacts` of op overload ``name.overload`` (``aten::mm``, ``default``)."""
    namespace, _, op = name.partition("::")
    comm = namespace in COMM_NAMESPACES
    if not (namespace in RECORDED_NAMESPACES or comm):
        return _PASS_THROUGH
    info = OpInfo.cached(getattr(getattr(getattr(torch.ops, namespace), op), overload))
    written_if = None
    if info.written_if is not None:
        flag, extra = info.written_if
        written_if = (flag, sorted(extra))
    return OpFacts(
        True,
        comm,
        sorted(info.written),
        sorted(info.write_only),
        written_if,
        list(info.view_returns),
        info.uninitialized,
        info.shape_only,
        tuple(sorted(info.overwrites)),
    )


class Written(enum.IntEnum):
    """Whether the values an op wrote are final when it returns (capture.cpp's ``Written``)."""

    UNMEASURED = 0  #: never while the step is recorded (p2p, a functional collective)
    FINAL = 1
    LATER = 2  #: once the program waits for them (a c10d collective left running)


#: ``torch.cuda.is_initialized``, typed (torch leaves it unannotated)
_cuda_initialized = cast("Callable[[], bool]", torch.cuda.is_initialized)


@contextmanager
def _off_while_compiling(ext: ModuleType) -> Iterator[None]:
    """Leave the engine off while Dynamo compiles: its tracing runs fake-tensor ops, which the
    engine (below the Python key) would record as the step's (the dispatch mode is not asked)."""
    callbacks = sys.modules.get("torch._dynamo.callback")
    handler = getattr(callbacks, "callback_handler", None)
    if handler is None:  # Dynamo not imported: nothing is compiled in this step
        yield
        return

    def start(_: Any) -> None:
        ext.enable(False)

    def end(_: Any) -> None:
        ext.enable(True)

    handler.register_start_callback(start)
    handler.register_end_callback(end)
    try:
        yield
    finally:
        handler.remove_start_callback(start)
        handler.remove_end_callback(end)


class NativeCapture:
    """Records the ops of one step with the native engine; the interface of ``StepCapture``."""

    _current: ClassVar[NativeCapture | None] = None
    _configured: ClassVar[bool] = False

    def __init__(self, step: int, options: Options, names: Names, ext: ModuleType) -> None:
        self.step = step
        self.options = options
        self.names = names
        self._ext = ext
        self.tracker = PhaseTracker(
            names, on_tensor_named=self.name_tensor, on_compiled=self._compiled, listener=ext
        )
        self._events: list[Event] = []
        self._comms = CommTracker()
        #: communication ops between their two callbacks: token -> (spec, "c10d", arguments,
        #: op name)
        self._comm_calls: dict[int, tuple[CommSpec, dict[str, Any] | None, tuple[Any, ...], str]] = {}
        self._c10d: dict[int, dict[str, Any]] = {}  #: op index -> its "c10d" attribute
        self._tokens = itertools.count()
        #: collectives left running, by token: (op index, op name, Work)
        self._running: dict[int, tuple[int, str, Any]] = {}
        self._stats = StatsCollector(hist_bins=options.hist_bins) if options.stats else None
        self._compiled_seen = False
        self._data: Any = None  # the engine's StepData, once stopped
        self._t0_ns = time.perf_counter_ns()  # the step's start: op starts count from it
        self._wall = time.time()

    # -- callbacks from the engine ----------------------------------------------------------
    @staticmethod
    def _observe(index: int, t: torch.Tensor) -> None:
        capture = NativeCapture._current
        if capture is not None and capture._stats is not None:
            capture._stats.add(index, t)

    @staticmethod
    def _select(role: int, module: str, op: str, source: bool) -> bool:
        capture = NativeCapture._current
        selection = None if capture is None else capture.options.values
        return selection is not None and selection.matches(_ROLES[role].label, module, op, source)

    @staticmethod
    def _comm_before(name: str, overload: str, args: tuple[Any, ...]) -> int:
        """A communication op about to run: its "c10d" attribute (recorder.collectives)."""
        capture = NativeCapture._current
        if capture is None:
            return -1
        namespace, _, op = name.partition("::")
        info = OpInfo.cached(getattr(getattr(getattr(torch.ops, namespace), op), overload))
        c10d = capture._comms.describe(info.comm or OTHER, info.arg_names, args, {}, {})
        token = next(capture._tokens)
        capture._comm_calls[token] = (info.comm or OTHER, c10d, args, info.name)
        return token

    @staticmethod
    def _comm_after(token: int, index: int, out: object) -> int:
        """The op ran: whether its written values are final, never measured, or final once the
        program waits for them (a c10d collective is left running, so DDP's bucket all-reduces
        still overlap backward)."""
        capture = NativeCapture._current
        if capture is None or token not in capture._comm_calls:
            return 0
        spec, c10d, args, name = capture._comm_calls.pop(token)
        done = capture._comms.complete(spec, c10d, args, out, wait=False)
        capture._events.extend(done.events(name, index))
        if c10d is not None:
            capture._c10d[index] = c10d
        if done.work is not None:
            capture._running[token] = (index, name, done.work)
            return Written.LATER
        return Written.FINAL if done.final else Written.UNMEASURED

    @staticmethod
    def _later_done(token: int) -> bool:
        """Whether the collective left running under ``token`` has completed."""
        capture = NativeCapture._current
        running = None if capture is None else capture._running.get(token)
        return running is None or bool(running[2].is_completed())

    def _configure(self) -> None:
        if not NativeCapture._configured:
            self._ext.configure(
                _describe,
                self._observe,
                self._select,
                self._comm_before,
                self._comm_after,
                self._later_done,
                TORCH_TO_DTYPE,
                kernel_address(),
            )
            NativeCapture._configured = True

    # -- naming -----------------------------------------------------------------------------
    def name_tensor(self, t: torch.Tensor, role: Role, name: str) -> None:
        """Give ``t`` (and every value it has held in this step) a role and a name."""
        self._ext.name(t, int(role), name)

    def _compiled(self, module: torch.nn.Module) -> None:
        if not self._compiled_seen:
            self._compiled_seen = True
            self._events.append(compile_bypassed(module))

    # -- lifecycle --------------------------------------------------------------------------
    def install(self) -> ExitStack:
        """Start the engine and enter the hooks; the returned ``ExitStack`` stops both."""
        if torch.cuda.is_available() and _cuda_initialized():
            raise TraceError(
                "This process started using CUDA after record() chose the native capture "
                "engine, which records CPU steps only; move the model to the device before "
                "record(), or pass record(engine='python')."
            )
        claim_capture(self)
        self._configure()
        o = self.options
        stack = ExitStack()
        stack.callback(release_capture, self)
        try:
            self._ext.start(
                o.stats, o.views, o.values is not None, o.hist_bins, SMALL_NUMEL, self._t0_ns
            )
            NativeCapture._current = self
            stack.callback(self._stop)
            stack.enter_context(self.tracker.install())
            stack.enter_context(_off_while_compiling(self._ext))
            for t, role, name in self.names.named_tensors():
                self.name_tensor(t, role, name)
            self._ext.enable(True)
            stack.callback(self._ext.enable, False)
        except BaseException:
            stack.close()
            raise
        return stack

    def _stop(self) -> None:
        """Leave the engine off (an exception in the step, or the normal end before finish)."""
        self._ext.enable(False)
        try:
            if NativeCapture._current is self and self._data is None:
                self._wait_running()
        finally:
            if NativeCapture._current is self and self._data is None:
                self._data = self._ext.finish()
            NativeCapture._current = None

    def _wait_running(self) -> None:
        """Wait on the collectives left running whose values no op touched since, and measure
        their values (the program waited on the others before touching them)."""
        running, self._running = self._running, {}
        for index, name, work in running.values():
            try:
                work.wait()
            except Exception as e:
                what = "".join(traceback.format_exception_only(type(e), e)).strip()
                self._events.extend(Completion(False, what).events(name, index))
        self._ext.measure_later()

    def finish(self) -> RawStep:
        """End the capture and return the step (its rows are built on the writer thread)."""
        duration = (time.perf_counter_ns() - self._t0_ns) / 1e9
        if self._data is None:
            self._stop()
        data, self._data = self._data, None
        values = data.take_values()
        selection = self.options.values
        for index, module, op in data.tentative:
            if selection is not None and not selection.matches(
                _ROLES[data.role_of(index)].label, module, op
            ):
                values.pop(index, None)
        stats = None
        if self._stats is not None:
            stats = self._stats.finish(data.n_tensors)
            rows = data.stats()
            flags = np.where(rows["fingerprint_only"].numpy() == 1, FINGERPRINT, ALL_FLAGS)
            stats.native_rows = NativeRows(
                rows["index"].numpy(),
                rows["numel"].numpy(),
                flags.astype(np.uint8),
                rows["floats"].numpy(),
                rows["ints"].numpy(),
            )
            stats.aliases.extend(data.aliases)
        events = self._events
        if data.error:
            events.append(recorder_error(data.error_op, data.error))
        self._stats = None
        c10d, self._c10d = self._c10d, {}
        return RawStep(
            self.step,
            [],
            [],
            [],
            [],
            list(data.host_ns),
            stats,
            values,
            [],
            events,
            wall_time=self._wall,
            duration=duration,
            host_start_ns=list(data.start_ns),
            mem_bytes=list(data.mem_bytes),
            process_groups=self._comms.process_groups,
            rows=lambda: _rows(data, c10d),
        )


def _rows(
    data: Any, c10d: dict[int, dict[str, Any]]
) -> tuple[list[OpRow], list[TensorRow], list[Role], list[str | None]]:
    """The engine's rows as the named rows of :mod:`recorder.captured` (on the writer thread),
    with each communication op's ``"c10d"`` attribute last among its arguments."""
    ops, tensors, roles, names = data.rows(OpRow, TensorRow, _PHASES, _ROLES, json_value, TORCH_TO_DTYPE)
    for index, attr in c10d.items():
        op = ops[index]
        ops[index] = op._replace(attrs={**(op.attrs or {}), "c10d": attr})
    return ops, tensors, roles, names
