"""``record(...)``: the user-facing recorder, shaped like ``torch.profiler.profile``.

Example::

    import recorder
    with recorder.record("runs/exp1", schedule=recorder.schedule(every=100), model=model) as rec:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)

Everything between two ``rec.step()`` calls is one step.  For a step the schedule picks, hooks and a
dispatch mode are entered through an ``ExitStack`` at the step's start and left at its end; for
other steps nothing of the recorder is active (in flight mode every step is captured and light
capture's hooks stay installed: :mod:`recorder.flight`).  Leaving the ``with`` block (normally or
by an exception) discards the unfinished step, writes every completed one (in flight mode the
ring only when something fired), and removes every hook, mode and tensor reference of the
recorder.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

import torch

from recorder.capture import StepCapture
from recorder.captured import RawStep
from recorder.distributed import Located, ManifestKeeper, locate
from recorder.engine import NativeCapture
from recorder.engine import choose as choose_engine
from recorder.flight.keeper import FlightKeeper
from recorder.options import Options, RecordOptions
from recorder.pipeline import BackgroundWriter, Sink
from recorder.rngsnap import rng_snapshot
from recorder.schedule import Action, Schedule
from recorder.schedule import schedule as make_schedule
from recorder.sinks import background_writer, open_trace_writer
from recorder.stats.native import available as native_stats_available
from recorder.tracking import Names
from tracefmt.errors import TraceError
from tracefmt.model import Event

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Recorder", "record"]

ScheduleLike = Schedule | Callable[[int], "Action | bool"]


class Recorder:
    """A recording session; use :func:`record` to make one and ``with`` to run it."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        schedule: ScheduleLike,
        options: Options,
        *,
        model: torch.nn.Module | None,
        sink: Sink | None,
        run_id: str | None,
        overwrite: bool,
        values_filter: str,
        start_step: int,
        provenance_extra: Mapping[str, str],
    ) -> None:
        self._path = path
        self._schedule = schedule
        self.options = options
        self._model = model
        self._sink = sink
        self._run_id = run_id
        self._overwrite = overwrite
        self._values_filter = values_filter
        self._provenance_extra = dict(provenance_extra)
        self._step = start_step
        self._names = Names()
        self._stack: ExitStack | None = None
        self._step_stack: ExitStack | None = None
        self._capture: StepCapture | NativeCapture | None = None
        self._engine_name = "python"
        self._engine: ModuleType | None = None
        self._capture_action = Action.NONE
        self._writer: BackgroundWriter | None = None
        self._stopped = self._warned_compile = False
        self._manifest: ManifestKeeper | None = None
        #: Where this process stands in the run and the run id (set when a run directory is opened).
        self.located: Located | None = None
        #: the steps handed to the writer to be written (not those a flight ring holds)
        self.recorded_steps: list[int] = []
        self._keeper: FlightKeeper | None = None
        self._scheduled = False
        self._step_t0 = (time.time(), time.perf_counter())

    @property
    def run_id(self) -> str | None:
        """The run id every rank's file carries (None until the ``with`` block opens a run dir)."""
        return None if self.located is None else self.located.run_id.run_id

    @property
    def dropped(self) -> int:
        """Steps captured but dropped because the writer queue was full (``backpressure='drop'``)."""
        return 0 if self._writer is None else self._writer.dropped

    def _action(self, step: int) -> Action:
        """What the full capture does at ``step``: the schedule's word, except in flight mode
        (every step is captured; the schedule says which are written whatever happens) and
        light mode (no full capture; the schedule says which steps are measured)."""
        result = self._schedule(step)
        if not isinstance(result, Action):
            result = Action.RECORD if result else Action.NONE
        self._scheduled = result is Action.RECORD
        if self.options.mode == "record":
            return result
        return Action.RECORD if self.options.mode == "flight" else Action.NONE

    @property
    def ring_peak_bytes(self) -> int:
        """Flight mode: the most bytes the ring of full steps held at once (0 otherwise)."""
        return 0 if self._writer is None else int(getattr(self._writer.sink, "ring_peak_bytes", 0))

    @property
    def fired(self) -> list[Event]:
        """The trigger events of this recording so far (flight and light modes)."""
        return [] if self._keeper is None else list(self._keeper.fired)

    # -- with ----------------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self._stack is not None:
            raise RuntimeError("This recorder is already running; make a new one with record().")
        stack = ExitStack()
        try:
            distributed = (
                torch.distributed.is_available() and torch.distributed.is_initialized()
            ) or os.environ.get("WORLD_SIZE", "1") not in ("", "1")
            self._engine_name, self._engine = choose_engine(
                self.options, distributed=distributed, model=self._model
            )
            self._provenance_extra["recorder_engine"] = self._engine_name
            if self._sink is None:
                if self._path is None:
                    raise ValueError("record() needs a path or a sink= to write steps to.")
                o = self.options
                self.located = locate(run_id=self._run_id, rank=o.rank, world_size=o.world_size)
                if self.located.placement.rank == 0:
                    self._manifest = ManifestKeeper(self._path, self.located)
                    self._manifest.check_free(overwrite=self._overwrite)
                self._sink, target = open_trace_writer(
                    self._path,
                    self.located,
                    self.options,
                    overwrite=self._overwrite,
                    values_filter=self._values_filter,
                    provenance_extra=self._provenance_extra,
                )
            else:
                target = str(self._path or type(self._sink).__name__)
            o = self.options
            self._writer = background_writer(self._sink, target, o)
            self._writer.watch_modules(self._model)  # its module table goes with the steps (1.5)
            stack.callback(self._release)
            stack.callback(self._writer.close)
            if self._manifest is not None:
                self._manifest.write()
            if self._model is not None:
                self._names.add_root(self._model)
            if o.mode != "record":
                rank = self.located.placement.rank if self.located else (o.rank or 0)
                self._keeper = FlightKeeper(o, self._names, self._writer, rank=rank, run_id=self.run_id)
                stack.enter_context(self._keeper.install())
            if self.options.stats:
                native_stats_available()  # build or load the kernel now, not in the first step
            self._step_stack = stack.enter_context(ExitStack())
            self._stack = stack
            self._begin()
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        try:
            self._end_capture()
            writer = self._writer
            if exc is not None and self._keeper is not None and writer and not writer.failed:
                self._keeper.exception(self._step, exc)
        finally:
            if stack is not None:
                stack.close()
        if exc_type is None and self._writer is not None:
            self._writer.check()

    def _release(self) -> None:
        """Drop every reference to the user's objects (hygiene after the with block)."""
        self._capture = None
        self._model = None
        self._names.clear()
        self._step_stack = None

    # -- steps -----------------------------------------------------------------------------
    def step(self, loss: Any = None, **scalars: Any) -> None:
        """End the current step (record it if the schedule says so) and start the next one.

        ``loss`` and ``scalars`` (numbers or one-element tensors) are stored with the step.
        Raises :class:`tracefmt.errors.TraceError` when the writer failed since the last call.
        """
        if self._stack is None or self._writer is None:
            raise RuntimeError("rec.step() was called outside `with recorder.record(...) as rec`.")
        if loss is not None:
            scalars = {"loss": loss, **scalars}
        raw = self._end_capture()
        disposition = None
        keeper = self._keeper
        if keeper is not None and (keeper.flight or self._scheduled) and not self._writer.failed:
            wall, t0 = self._step_t0
            _, disposition = keeper.end_step(
                self._step,
                scalars,
                scheduled=self._scheduled,
                wall_time=wall,
                duration=time.perf_counter() - t0,
            )
        elif keeper is not None:
            keeper.skip()
        if raw is not None and not self._writer.failed:
            raw.scalars = {
                k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in scalars.items()
            }
            if disposition is not None:
                raw.hold = disposition.hold
                raw.events = [*raw.events, *disposition.events]
            if not self._writer.submit(raw) and keeper is not None and disposition is not None:
                keeper.dropped(disposition.events)
            elif not raw.hold:
                self.recorded_steps.append(raw.step)
        if keeper is not None and disposition is not None:
            keeper.after_submit(self._step, disposition)
        self._step += 1
        try:
            self._writer.check()
        except TraceError:
            self._stopped = True
            raise
        self._begin()

    def flush(self) -> None:
        """Return once every step recorded so far is written and flushed to disk."""
        if self._writer is not None:
            self._writer.flush()

    def _begin(self) -> None:
        if self._stopped:
            return
        self._step_t0 = (time.time(), time.perf_counter())
        action = self._action(self._step)
        if self._keeper is not None:
            self._keeper.begin(self._step, scheduled=self._scheduled)
        if action is Action.NONE:
            return
        self._rng = rng_snapshot()  # format 1.6: the generators before the step's first op
        capture: StepCapture | NativeCapture
        if self._engine is not None:
            capture = NativeCapture(self._step, self.options, self._names, self._engine)
        else:
            capture = StepCapture(self._step, self.options, self._names)
        if self._step_stack is None:
            raise RuntimeError("rec.step() was called outside the record() block.")
        self._step_stack.enter_context(capture.install())
        self._capture, self._capture_action = capture, action

    def _end_capture(self) -> RawStep | None:
        capture, self._capture = self._capture, None
        if capture is None:
            return None
        if self._step_stack is not None:
            self._step_stack.close()
        raw = capture.finish()
        raw.rng_states = self._rng
        if self._manifest is not None:
            self._manifest.note_groups(raw.process_groups)
        if not self._warned_compile and any(e.kind == "compile_bypassed" for e in raw.events):
            self._warned_compile = True
            warnings.warn(
                "A torch.compile'd module ran while the recorder was capturing; it ran "
                "eagerly on recorded steps, and the trace shows the eager aten ops. "
                "Steps off the schedule run compiled.",
                stacklevel=3,
            )
        return raw if self._capture_action is Action.RECORD else None


def record(
    path: str | os.PathLike[str] | None = None,
    *,
    schedule: ScheduleLike | None = None,
    model: torch.nn.Module | None = None,
    run_id: str | None = None,
    overwrite: bool = False,
    values_filter: str = "none",
    start_step: int = 0,
    sink: Sink | None = None,
    provenance_extra: Mapping[str, str] | None = None,
    **options: Unpack[RecordOptions],
) -> Recorder:
    """Record training steps into the run directory ``path`` (``path/rank-00000.tft.h5``).

    * ``schedule``: which steps (default every step); see :func:`recorder.schedule`.
    * ``model``: names parameters and buffers by FQN and module paths from it; without it the
      first module called at top level in a step is taken as the model.
    * ``sink``: receive :class:`tracefmt.records.StepRecord` objects instead of writing a file.

    The other keywords are the fields of :class:`recorder.Options`, where their defaults are:

    * ``capture``: any of ``"graph"`` (always), ``"stats"`` (per-tensor statistics and fingerprint),
      ``"values"``; ``values`` picks which full values (``"all"`` or :func:`recorder.select`).
    * ``views``: also compute statistics and values of pure views (off: a view's numbers are its
      base's).  ``hist_bins``: a fixed-bin histogram per tensor.  ``source``: the user's
      ``file:line`` per op (slower).
    * ``backpressure``: ``"block"`` waits for the writer, ``"drop"`` skips the step and counts it.
      ``max_queue_steps`` / ``max_queue_bytes`` bound the queue.
    * Flushing: the writer thread commits written steps to the file and fsyncs it (the
      trace writer's default) when ``flush_every_steps`` steps are unflushed or
      ``flush_every_seconds`` have passed since the last flush, whichever comes first; a step
      that arrives after a quiet spell is flushed at once.  So a process killed outright
      (SIGKILL, the OOM killer) loses at most the last ``flush_every_steps`` recorded steps or
      about ``flush_every_seconds`` of them; an exception leaving the ``with`` block,
      ``rec.flush()`` and the end of the block lose nothing.  A flush costs the writer thread a
      few ms (mostly waiting for the disk), never the training thread.  Pass
      ``flush_every_steps=1`` to keep every step the moment it is written.
    * ``rank`` / ``world_size``: this process's place in a distributed run (one file per rank);
      unset, they come from the launcher (``RANK``, ``WORLD_SIZE``: torchrun sets them) or the
      initialised default process group, else 0 and 1.
    * ``engine``: who records the ops.  ``"auto"`` (default): the native C++ engine (built on
      first use, about a minute once per torch version, then cached), except for processes
      using CUDA, ``source=True``, and distributed jobs unless ``model`` holds plain tensors
      only (DDP does, FSDP2 does not), which take the Python dispatch mode; it
      also takes the dispatch mode, with one warning, when the engine cannot be built.
      ``"native"``: the engine or an error; ``"python"``: the dispatch mode.  The trace's
      provenance says which ran (``"recorder_engine"``); :mod:`recorder.engine` says how they
      differ.
    * ``mode``: ``"record"`` writes the steps the schedule picks; ``"flight"`` (:mod:`recorder.flight`)
      measures every step lightly (``light_updates``: with each parameter's update) and captures
      it in full into a ring of ``ring_steps`` steps and ``ring_bytes`` bytes, kept by a writer
      process that outlives this one (``writer_process``), written with ``after_steps`` more
      when a trigger fires (NaN/Inf created or in the state, a loss or gradient-norm spike,
      ``triggers``: :class:`recorder.flight.alarms.TriggerOptions`, the predicate ``trigger``,
      an exception, another rank's trigger); ``"light"`` measures the schedule's steps lightly.
      ``on_trigger``: ``"raise"``, ``"pdb"`` or a callable stops there (see
      :mod:`recorder.flight.keeper`).

    Under ``torchrun`` every rank writes ``path/rank-{rank:05d}.tft.h5`` with the same run id:
    ``run_id``, else ``TORCHELASTIC_RUN_ID``, else one agreed through the default process
    group's c10d store (so call ``init_process_group`` before ``record()``), else a new one.
    Each file's provenance holds a ``"distributed"`` object (rank, world and local sizes, node
    rank, host, pid, backend, where the run id came from); global rank 0 also writes
    ``path/run.json`` (:class:`tracefmt.RunManifest`: the expected ranks and the process groups
    seen).  ``overwrite`` lets each rank replace only its own file (rank 0 also the manifest).
    """
    if path is None and sink is None:
        raise ValueError(
            "record() needs a run directory path (or sink=... to receive step records in memory)."
        )
    if path is not None and sink is not None:
        raise ValueError("record() takes a path or a sink, not both.")
    if schedule is None:  # flight mode writes what the triggers pick; the others every step
        schedule = make_schedule(steps=()) if options.get("mode") == "flight" else make_schedule()
    if not callable(schedule):
        raise TypeError(
            f"record(schedule=...) takes recorder.schedule(...) or a function of the "
            f"step number, got {schedule!r}."
        )
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"record(model=...) takes a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"record(start_step=...) must be a non-negative int, got {start_step!r}.")
    return Recorder(
        path,
        schedule,
        Options.build(**options),
        model=model,
        sink=sink,
        run_id=run_id,
        overwrite=overwrite,
        values_filter=values_filter,
        start_step=start_step,
        provenance_extra=provenance_extra or {},
    )
