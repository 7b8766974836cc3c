"""What a capture hands to the writer thread: the named rows of one captured step.

The rows are built on the training thread, once per op and once per value, so they are
``NamedTuple``s (a tuple's size and unpacking, fields read by name); :mod:`recorder.assemble`
turns them into a :class:`tracefmt.records.StepRecord` on the writer thread.  :class:`OpCall`
and :class:`CudaStart` carry what the capture learns about an op before it runs to after it ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from recorder.convert import ArgTensor, DeviceEvent
from recorder.opinfo import OpInfo
from recorder.stats.cpu import PendingStats
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError
from tracefmt.manifest import ProcessGroupInfo
from tracefmt.model import Event, Phase, Role
from tracefmt.rngstate import RngState

__all__ = [
    "CudaStart",
    "CudaTiming",
    "InputRef",
    "OpCall",
    "OpRow",
    "RawStep",
    "TensorRow",
    "claim_capture",
    "compile_bypassed",
    "recorder_error",
    "release_capture",
]

#: An op's input: (graph tensor, argument position, item in a list argument or -1), the triple
#: :meth:`tracefmt.records.GraphBuilder.add_op` takes.  A plain tuple: a step has thousands,
#: passed through unread.
InputRef = tuple[int, int, int]


class TensorRow(NamedTuple):
    """A graph tensor: one value one tensor object held (the arguments of
    :meth:`tracefmt.records.GraphBuilder.add_tensor`, less the role and name, which a later
    op may still change)."""

    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    device: str
    producer: int  #: the op that made it, or -1: it entered the step from outside
    producer_slot: int
    version: int
    storage_offset: int

    def same_but_offset(self, other: TensorRow) -> bool:
        """True when ``other`` differs from this row in its storage offset at most."""
        return self._replace(storage_offset=other.storage_offset) == other


class OpRow(NamedTuple):
    """An op in execution order (the arguments of :meth:`tracefmt.records.GraphBuilder.add_op`)."""

    name: str
    phase: Phase
    module: str
    inputs: tuple[InputRef, ...]
    outputs: tuple[int, ...]
    attrs: dict[str, Any] | None  #: the non-tensor arguments as JSON data, None for none
    source: str | None

    def same_but_attrs(self, other: OpRow) -> bool:
        """True when ``other`` differs from this row in its arguments at most."""
        return self._replace(attrs=other.attrs) == other


class CudaStart(NamedTuple):
    """The events around a CUDA op, the first one recorded, and the memory allocated before it."""

    start: DeviceEvent
    end: DeviceEvent
    mem_before: int


class OpCall(NamedTuple):
    """What :meth:`recorder.capture.StepCapture._before` found out about an op, for ``_after``."""

    info: OpInfo
    phase: Phase
    module: str
    inputs: list[InputRef]
    written: list[torch.Tensor]  #: the tensor arguments the op writes
    attrs: dict[str, Any]
    tensors: list[ArgTensor]
    grad_of: str | None  #: for ``AccumulateGrad``: the parameter whose gradient it makes
    source: str | None
    cuda: CudaStart | None


class CudaTiming(NamedTuple):
    """The device time and memory of op ``op``, read once ``end`` has completed."""

    op: int
    start: DeviceEvent
    end: DeviceEvent
    mem_bytes: int  #: device memory allocated by the op (after minus before)


@dataclass
class RawStep:
    """A captured step before it becomes a :class:`tracefmt.records.StepRecord`.

    Built on the training thread; turned into a record on the writer thread, so graph building
    stays off the training path.  It holds tensors only as value copies and 0-d results.
    ``roles`` and ``names`` run along ``tensors`` (a tensor's name may come after its row), and
    ``host_ns`` and ``host_start_ns`` along ``ops``.
    """

    step: int
    ops: list[OpRow]
    tensors: list[TensorRow]
    roles: list[Role]
    names: list[str | None]
    host_ns: list[int]
    stats: PendingStats | None
    values: dict[int, torch.Tensor]
    cuda_times: list[CudaTiming]
    events: list[Event]
    scalars: dict[str, float | torch.Tensor] = field(default_factory=dict)
    wall_time: float = 0.0
    duration: float = float("nan")
    dropped: int = 0
    values_ready: DeviceEvent | None = None
    #: every process group this step's communication ops used (see :mod:`recorder.collectives`)
    process_groups: tuple[ProcessGroupInfo, ...] = ()
    #: when each op started on the host, in ns after the step's start (the instant ``wall_time``
    #: records and ``duration`` is measured from, on the same monotonic clock), -1 where not
    #: measured; empty: no op's start was measured (format 1.3, ``op_starts``)
    host_start_ns: list[int] = field(default_factory=list)
    #: bytes of storage each op's outputs newly allocated, along ``ops`` (-1: not measured; a
    #: CUDA op's allocator delta comes in ``cuda_times`` instead); empty: none measured
    mem_bytes: list[int] = field(default_factory=list)
    #: flight mode: keep the step in the sink's ring instead of writing it
    hold: bool = False
    #: the generators' states at the step's start (format 1.6, :mod:`recorder.rngsnap`)
    rng_states: tuple[RngState, ...] = ()
    #: the native engine's rows, built on the writer thread (:meth:`materialize`)
    rows: Callable[[], tuple[list[OpRow], list[TensorRow], list[Role], list[str | None]]] | None = None

    def materialize(self) -> None:
        """Fill ``ops``, ``tensors``, ``roles`` and ``names`` from the native engine's rows,
        if they are still there (a no-op for the Python engine's steps)."""
        if self.rows is not None:
            self.ops, self.tensors, self.roles, self.names = self.rows()
            self.rows = None


def compile_bypassed(module: torch.nn.Module) -> Event:
    """The step event saying a ``torch.compile``'d module ran eagerly under the recorder."""
    return Event(
        "compile_bypassed",
        f"{type(module).__name__} is torch.compile'd; under the recorder it ran eagerly, "
        "so this step's graph shows the eager aten ops, not the compiled kernels.",
    )


def recorder_error(op: int, what: str) -> Event:
    """The step event saying the capture failed after ``op`` ops (the rest of the step ran
    unrecorded): ``what`` went wrong."""
    return Event("recorder_error", f"The recorder stopped capturing this step after op {op}: {what}")


#: The capture running in this process, if any (either engine's): one at a time, since the
#: module and optimizer hooks are global and a second capture would record the first's work.
_running: list[Any] = []


def claim_capture(capture: Any) -> None:
    """Make ``capture`` (which has a ``step``) the process's one running capture, or raise."""
    if _running:
        raise TraceError(
            f"Another recorder is capturing step {_running[0].step} in this process; two "
            "recorders cannot capture the same steps. Give them schedules that do not overlap, "
            "or record with one recorder."
        )
    _running.append(capture)


def release_capture(capture: Any) -> None:
    """``capture`` no longer runs."""
    if _running and _running[0] is capture:
        _running.clear()
