"""Light capture: a training step measured through module and optimizer hooks only.

No dispatch mode and no per-op work: a global module forward hook measures each module's output,
and the global optimizer step hooks measure every parameter the optimizer steps.  The result of a
step is a :class:`tracefmt.light.LightStepRecord`, rows in the order they were measured:

* ``OUTPUT``, one row **per call** of a module (a module called twice in a step, or again by
  activation checkpointing in backward, has two rows): all floating-point tensors of its output
  together (tensors, and tensors inside tuples, lists and dicts, e.g. a Hugging Face
  ``ModelOutput``); a module returning none has no row.  Rows come in the order the calls
  *returned*: a module's row follows its submodules' rows.  Per call rather than aggregated so
  that the first module whose output turned non-finite is a row, not a mix of calls.  The row
  gets ``INPUTS_NONFINITE`` when the module's floating-point inputs (positional and keyword)
  held NaN or Inf; the inputs are read only when the output is non-finite, so a finite step
  costs nothing for it (on CPU; see "Devices").
* ``GRADIENT``, at ``optimizer.step()``'s start: each parameter that has a gradient.
* ``UPDATE`` (``updates=True``): the step's change of each of those parameters, new minus old
  value, as the parameter's dtype computes it.  The old values are copied into buffers kept
  between steps; the kernel reads each buffer with its parameter in one pass, the rows of the
  change and of the new value together, and writes nothing (the torch path computes the change
  into the buffers in place, ``torch._foreach_sub_``): **memory: one copy of every parameter
  the optimizer steps, on its device, while the hooks are installed**
  (:attr:`LightCapture.update_bytes`).  ``updates=False`` drops these rows and the buffers.
* ``PARAMETER``: each of those parameters after the step.

Every row counts NaN and Inf (``COUNTS``) and has min, max, mean, population std and L2 norm over
its finite values (``MOMENTS``, absent when there is none); :mod:`recorder.flight.lightstats`
measures them.  ``name`` is the module path or the parameter's FQN from
:class:`recorder.tracking.Names`; a module no root reaches is named when the step finishes: a
module outside every known module becomes a root (``""``, as :class:`~recorder.tracking.
PhaseTracker` names them), a module created inside ``forward`` and never registered gets its
class name.

Devices: CPU float32 and bfloat16 tensors take the one-pass C kernel at once (a module's single
output tensor by one call from the hook, an optimizer's tensors by one call for all of them:
:mod:`recorder.flight.lightnative`); on other devices
the reductions stay on the device and are read once, at :meth:`LightCapture.finish`.  There,
without a synchronisation, the output's non-finite count is not known in the hook: the
inputs are then always reduced on the device (one extra reduction per floating-point input),
and ``on_created`` costs a synchronisation per module call.  (The CUDA path is the torch path
that the tests run on CPU with ``native=False``; it has not been run on a GPU.)

Install the hooks once for the run and call :meth:`~LightCapture.finish` at each step's end
(:meth:`~LightCapture.reset` drops what ran between steps, such as an evaluation): closing the
stack frees the update buffers, so a per-step install would allocate them again every step::

    capture = LightCapture(names)
    with capture.install():
        for step in range(steps):
            loss = train_step()
            record = capture.finish(step, {"loss": loss})

Cost (1 torch thread, 2 shared cores): every output and gradient is read once more, every
parameter twice with its update (the copy before the step, then one pass over the old and new
values for both rows); a container module that returns its last submodule's output unchanged
(same tensor, same version) is not read again.  The Python around the passes, warm (timeit on
tiny GPT-2's tensors): 3 us per module call, 50-60 us per optimizer hook (28 parameters), 60 us
for the step's table; inside a training step, with cold caches, several times that.  CPU time
in the hooks and in the recorder's end of step, light mode, per step: tiny GPT-2 (31 module
calls, 115 rows, 9-11 ms steps) 0.7-0.8 ms in the module hooks, 0.5 ms in the optimizer hooks,
0.8-1.0 ms at the end of the step (0.5 ms of it :meth:`~LightCapture.finish`, the rest the
triggers); the FACTS GPT (260-400 ms steps) 16-18 ms, nearly all of it the passes over 9 M
output and 3.2 M parameter elements.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any, NamedTuple

import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from recorder.engine import hidden
from recorder.flight.lightnative import CODES, Kept, Plan
from recorder.flight.lightstats import StepRows
from recorder.tracking import Names
from tracefmt.light import LightFlags, LightKind, LightStepRecord

__all__ = ["LightCapture", "ModuleInputs", "OnCreated"]

_OUTPUT, _GRADIENT = int(LightKind.OUTPUT), int(LightKind.GRADIENT)
_UPDATE, _PARAMETER = int(LightKind.UPDATE), int(LightKind.PARAMETER)
_INPUTS_NONFINITE = int(LightFlags.INPUTS_NONFINITE)
#: Containers deeper than this are not searched for output or input tensors.
_DEPTH = 4


class ModuleInputs(NamedTuple):
    """What a module was called with: positional and keyword arguments as passed."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


#: ``on_created(module_path, module, inputs, output)``: called from the forward hook, before the
#: module returns to the training loop, for the first module call of a step whose output holds
#: NaN or Inf while its floating-point inputs held none.  What it raises propagates.
OnCreated = Callable[[str, torch.nn.Module, ModuleInputs, Any], None]


def _floats(obj: object, out: list[torch.Tensor], depth: int = 0) -> list[torch.Tensor]:
    """The floating-point strided tensors in ``obj`` (tensors, tuples, lists, dict values)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.layout == torch.strided and not obj.is_meta:
            out.append(obj)
    elif depth < _DEPTH:
        if isinstance(obj, (list, tuple)):
            for item in obj:
                _floats(item, out, depth + 1)
        elif isinstance(obj, dict):
            for item in obj.values():
                _floats(item, out, depth + 1)
    return out


def _inputs_sum(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """0-d float64 sum of ``inputs``: finite exactly when none holds NaN or Inf."""
    with torch.no_grad():
        sums = [t.detach().sum(dtype=torch.float64) for t in inputs]
        return torch.stack(sums).sum() if len(sums) > 1 else sums[0]


def _nonfinite(inputs: Sequence[torch.Tensor]) -> bool:
    """Whether any of ``inputs`` holds NaN or Inf (synchronises on a device)."""
    return bool(inputs) and not math.isfinite(float(_inputs_sum(inputs)))


class LightCapture:
    """Measures training steps through hooks and returns one :class:`LightStepRecord` per step.

    ``names`` names modules and parameters (shared with the rest of the recorder);
    ``updates`` adds ``UPDATE`` rows (and their buffers, see the module's docstring);
    ``on_created`` is :data:`OnCreated`; ``native=False`` uses the torch path for CPU tensors
    too (what a GPU runs; for tests).
    """

    def __init__(
        self,
        names: Names,
        *,
        updates: bool = True,
        on_created: OnCreated | None = None,
        native: bool = True,
    ) -> None:
        self.names = names
        self.updates = updates
        self.on_created = on_created
        self._rows = StepRows(native=native)
        self._native = self._rows.kernels is not None
        self._index: dict[str, int] = {}
        #: id(module) -> (weak reference, name index), for modules with a path
        self._paths: dict[int, tuple[weakref.ref[torch.nn.Module], int]] = {}
        self._names: list[str] = []
        self._snapshot: tuple[str, ...] = ()
        self._stepping: dict[int, Kept] = {}
        self._kept: weakref.WeakKeyDictionary[torch.optim.Optimizer, Kept] = weakref.WeakKeyDictionary()
        #: the last output the kernel read, unchanged since if its version is: (tensor, version,
        #: slot); a module that returns its last submodule's output is not read twice
        self._last: tuple[weakref.ref[torch.Tensor], int, int] | None = None
        #: modules no root reached, in the order they ran this step; a row names the i-th -1 - i
        self._pending: list[torch.nn.Module] = []
        self._pending_ids: dict[int, int] = {}
        self._created_seen = self._installed = False

    # -- the hooks ------------------------------------------------------------------------------

    def install(self) -> ExitStack:
        """Install the global hooks; closing the returned stack removes them and drops every
        tensor and module this capture holds (the step under way is discarded)."""
        if self._installed:
            raise RuntimeError("This LightCapture is installed already; close its stack first.")
        stack = ExitStack()
        mod = torch.nn.modules.module
        self._installed = True
        stack.callback(self._release)
        forward = mod.register_module_forward_hook(self._forward, with_kwargs=True)
        # torch 2.13's handle leaves the with_kwargs entry behind; remove it too
        stack.callback(mod._global_forward_hooks_with_kwargs.pop, forward.id, None)
        stack.callback(forward.remove)
        stack.callback(register_optimizer_step_pre_hook(self._optimizer_pre).remove)
        stack.callback(register_optimizer_step_post_hook(self._optimizer_post).remove)
        return stack

    def _forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if type(output) is torch.Tensor and self._native:  # the common case, and the fast path
            code = CODES.get(output.dtype)
            if code is not None and output.is_cpu and output.is_contiguous():
                last, rows = self._last, self._rows
                if output.is_inference():  # it has no version counter
                    bad = rows.one(self._module_name(module), _OUTPUT, output, code)
                elif last is not None and last[0]() is output and last[1] == output._version:
                    name = self._module_name(module)  # a container's: its last submodule's
                    bad = rows.repeat(name, _OUTPUT, output.numel(), last[2])
                else:
                    bad = rows.one(self._module_name(module), _OUTPUT, output, code)
                    if bad >= 0:
                        self._last = (weakref.ref(output), output._version, rows.n_slots - 1)
                if bad == 0:
                    return
                if bad > 0:
                    self._judge(module, args, kwargs, output, output, bad)
                    return
                # its sums overflowed float: the general path measures it in float64
        if isinstance(output, torch.Tensor):
            if not output.is_floating_point() or output.is_meta:
                return
            tensors = [output]
        else:
            tensors = _floats(output, [])
            if not tensors:
                return
            if len(tensors) > 1:  # one row on one device: the first tensor's
                tensors = [t for t in tensors if t.device == tensors[0].device]
        name = self._module_name(module)
        with hidden():
            bad = self._rows.output(name, _OUTPUT, tensors)
        if bad:
            self._judge(module, args, kwargs, output, tensors[0], bad)

    def _module_name(self, module: torch.nn.Module) -> int:
        """The name index of ``module``'s path; below 0 when it has none yet (it is named at
        the end of the step: see ``_pending``)."""
        hit = self._paths.get(id(module))
        if hit is not None and hit[0]() is module:
            return hit[1]
        path = self.names.modules.get(module)
        if path is None:
            code = self._pending_ids.get(id(module))
            if code is None:  # the list holds the module: its id stays its own this step
                code = self._pending_ids[id(module)] = -1 - len(self._pending)
                self._pending.append(module)
            return code
        i = self._name(path)  # a module's path does not change while it is known
        self._paths[id(module)] = (weakref.ref(module), i)
        return i

    def _judge(
        self,
        module: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        first: torch.Tensor,
        bad: int,
    ) -> None:
        """After a row whose output held NaN or Inf (``bad > 0``) or a torch row (``bad < 0``,
        ``first`` its first tensor): flag the row when the inputs held NaN or Inf too; else
        the module created them: ``on_created``, once per step."""
        rows = self._rows
        with hidden():
            if bad < 0:  # a torch row: known at once on CPU, after a sync on a device
                if self.on_created is None and first.device.type != "cpu":
                    inputs = _floats((args, kwargs), [])
                    if inputs:  # checked on the device, read at the end
                        rows.last_inputs(_inputs_sum(inputs))
                    return
                if not rows.last_nonfinite():
                    return
            if _nonfinite(_floats((args, kwargs), [])):
                rows.flags[len(rows) - 1] = _INPUTS_NONFINITE
                return
        if self.on_created is not None and not self._created_seen:
            self._created_seen = True
            path = self.names.modules.get(module)
            where = path if path is not None else self._resolve([module])[0]
            self.on_created(where, module, ModuleInputs(args, kwargs), output)

    def _optimizer_pre(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.names.optimizers.add(optimizer)
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is not None and g.layout == torch.strided:
                    params.append(p)
                    grads.append(g)
        if not params:
            return
        kept = self._kept.get(optimizer)
        if kept is None or not kept.steps(params) or not kept.in_place():
            names = {id(p): name for p, name in self.names.stepped(optimizer)}
            ids = [self._name(names[id(p)]) for p in params]
            kept = self._kept[optimizer] = Kept(params, ids, self._native, updates=self.updates)
        kept.grads.read(grads)
        with hidden():
            self._rows.batch(kept.names, _GRADIENT, grads, kept.grads)
            if kept.buffers:
                self._rows.copy(kept.buffers, params, kept.buffer_where, kept.where)
        self._stepping[id(optimizer)] = kept

    def _optimizer_post(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        kept = self._stepping.pop(id(optimizer), None)
        if kept is None:
            return
        in_place = kept.in_place()  # else a parameter changed size: no update rows
        with hidden():
            if kept.buffers and in_place:
                self._rows.update(kept.names, kept.buffers, kept.params, kept.buffer_where, kept.where)
            else:
                where = kept.where if in_place else Plan(kept.params, self._native)
                self._rows.batch(kept.names, _PARAMETER, kept.params, where)

    # -- names ----------------------------------------------------------------------------------

    def _name(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            i = self._index[name] = len(self._names)
            self._names.append(name)
        return i

    def _resolve(self, modules: list[torch.nn.Module]) -> list[str]:
        """Paths of modules no known root reached when they ran (see the module's docstring)."""
        known = self.names.modules
        unknown = [m for m in modules if m not in known]
        inner = {id(s) for u in unknown for s in u.modules() if s is not u}
        for u in unknown:
            if id(u) not in inner and u not in known:
                self.names.add_root(u)
        paths = [known.get(m) for m in modules]
        return [type(m).__name__ if p is None else p for m, p in zip(modules, paths, strict=True)]

    # -- the step -------------------------------------------------------------------------------

    def finish(
        self,
        step: int,
        scalars: Mapping[str, float] | None = None,
        *,
        wall_time: float | None = None,
        duration: float = math.nan,
    ) -> LightStepRecord:
        """The record of the step measured since the last ``finish`` (or ``reset``), with the
        loss and user ``scalars`` (converted with ``float``: a device tensor synchronises);
        starts the next step.  ``names`` of the record are every name this capture has used,
        so indices stay the same from step to step."""
        # rows name modules no root reached: name them now
        pending = [self._name(p) for p in self._resolve(self._pending)] if self._pending else []
        table = self._rows.table(pending)
        if len(self._snapshot) != len(self._names):
            self._snapshot = tuple(self._names)
        record = LightStepRecord(
            step=step,
            names=self._snapshot,
            rows=table,
            scalars={k: _scalar(v) for k, v in (scalars or {}).items()},
            wall_time=time.time() if wall_time is None else wall_time,
            duration=duration,
        )
        self.reset()
        return record

    def reset(self) -> None:
        """Drop what was measured since the last ``finish`` (a step not to be recorded)."""
        self._rows.clear()
        self._stepping.clear()
        self._created_seen = False
        self._pending, self._pending_ids, self._last = [], {}, None

    @property
    def update_bytes(self) -> int:
        """Bytes held for ``UPDATE`` rows: the old values of the parameters being stepped."""
        return sum(b.nbytes for kept in self._kept.values() for b in kept.buffers)

    def _release(self) -> None:
        self._installed = False
        self.reset()
        self._rows.lengths.clear()
        self._paths.clear()
        self._kept = weakref.WeakKeyDictionary()


def _scalar(value: object) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach())
    return float(value)  # type: ignore[arg-type]
