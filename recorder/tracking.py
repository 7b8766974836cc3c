"""Where an op runs: module path, phase, and the names of parameters, gradients and optimizer state.

Forward ops get the module path from a stack kept by global module pre/post hooks.  Backward ops get
the module whose forward created their autograd node: the hooks also record the autograd sequence
number at each module entry and exit, and a node's ``_sequence_nr()`` is bisected into those
boundaries (sequence numbers grow as nodes are created on a thread).  ``AccumulateGrad`` nodes have
no sequence number; their ``variable`` names the parameter.

Phases: backward when inside ``torch.autograd.backward``/``grad`` or an autograd node; forward inside
a module call; optimizer inside ``Optimizer.step`` (global step hooks); forward for an op outside
modules that reads a tensor requiring grad while grad mode is on (a loss computed in the loop);
other for the rest (data movement, gradient clipping, GradScaler, LR schedulers, zero_grad).
"""

from __future__ import annotations

import bisect
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from types import FrameType
from typing import Any, Protocol

import torch
from torch.autograd.graph import Node
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from recorder.convert import weak_tensor_map
from tracefmt.model import Phase, Role

ACCUMULATE_GRAD_SEQ = 2**64 - 1

__all__ = ["Names", "PhaseTracker", "TrackerListener", "source_location"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def source_location() -> str | None:
    """``file:line`` of the innermost caller outside torch and the recorder (``<...>`` frames,
    such as dynamo's, skipped too)."""
    frame: FrameType | None = sys._getframe(4)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_TORCH_DIR) or path.startswith(_HERE) or path.startswith("<")):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module a wrapper stands for: a ``torch.compile`` wrapper (``OptimizedModule``) or
    ``DistributedDataParallel``, in any nesting, so parameters are named as in the user's model
    (``0.weight``, not ``module.0.weight``)."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module) and isinstance(
            module, torch.nn.parallel.DistributedDataParallel
        ):
            inner = module.module
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def is_compiled_module(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")


class Names:
    """Known tensors of a recording session: parameters and buffers by FQN, optimizers seen.

    Keys are weak, so nothing here keeps a model alive; :meth:`clear` drops everything.
    """

    def __init__(self) -> None:
        self.modules: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self.roots: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self.optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self.params = weak_tensor_map()
        self.buffers = weak_tensor_map()
        #: per optimizer: the parameters it steps (strong: it holds them too) and their names
        self._stepped: weakref.WeakKeyDictionary[
            torch.optim.Optimizer, tuple[list[torch.Tensor], list[str]]
        ] = weakref.WeakKeyDictionary()

    def add_root(self, module: torch.nn.Module) -> None:
        """Name ``module`` ``""`` and its submodules, parameters and buffers by their FQN."""
        inner = _unwrap(module)
        if inner in self.roots:
            return
        self.roots.add(inner)
        self.modules[module] = ""
        for name, sub in inner.named_modules(remove_duplicate=False):
            self.modules.setdefault(sub, name)
        for name, p in inner.named_parameters(remove_duplicate=False):
            if p not in self.params:
                self.params[p] = name
        for name, b in inner.named_buffers(remove_duplicate=False):
            if b not in self.buffers:
                self.buffers[b] = name

    def param_name(
        self,
        p: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        group: int = 0,
        item: int = 0,
    ) -> str:
        name = self.params.get(p)
        if name is None:
            name = f"optimizer{id(optimizer) % 10000}.group{group}.param{item}"
            self.params[p] = name
        return name

    def stepped(self, optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, str]]:
        """``(parameter, name)`` of every parameter ``optimizer`` steps, in group order.

        Looked up once per optimizer and kept while its groups hold the same tensors: the
        recorder asks at every step, and a lookup in the weak tensor maps costs microseconds.
        """
        params = [p for group in optimizer.param_groups for p in group["params"]]
        cached = self._stepped.get(optimizer)
        if (
            cached is not None
            and len(cached[0]) == len(params)
            and all(a is b for a, b in zip(cached[0], params, strict=True))
        ):
            return list(zip(params, cached[1], strict=True))
        names = [
            self.param_name(p, optimizer, g, i)
            for g, group in enumerate(optimizer.param_groups)
            for i, p in enumerate(group["params"])
        ]
        self._stepped[optimizer] = (params, names)
        return list(zip(params, names, strict=True))

    def named_tensors(self) -> Iterator[tuple[torch.Tensor, Role, str]]:
        """Every tensor with a name now: parameters, buffers, gradients and optimizer state."""
        for optimizer in list(self.optimizers):
            self.stepped(optimizer)
        for p, name in list(self.params.items()):
            yield p, Role.PARAMETER, name
            if p.grad is not None:
                yield p.grad, Role.GRADIENT, f"{name}.grad"
        for b, name in list(self.buffers.items()):
            yield b, Role.BUFFER, name
        for optimizer in list(self.optimizers):
            yield from self.optimizer_state(optimizer)

    def optimizer_state(
        self, optimizer: torch.optim.Optimizer
    ) -> Iterator[tuple[torch.Tensor, Role, str]]:
        known = {id(p): name for p, name in self.stepped(optimizer)}
        for p, state in list(optimizer.state.items()):
            if not isinstance(p, torch.Tensor) or not isinstance(state, dict):
                continue
            base = known.get(id(p)) or self.param_name(p, optimizer)
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    yield value, Role.OPTIMIZER_STATE, f"{base}.{key}"

    def clear(self) -> None:
        self.modules = weakref.WeakKeyDictionary()
        self.roots = weakref.WeakSet()
        self.optimizers = weakref.WeakSet()
        self.params = weak_tensor_map()
        self.buffers = weak_tensor_map()
        self._stepped = weakref.WeakKeyDictionary()


class TrackerListener(Protocol):
    """Told of every module entry and exit and every change of the phase flags: the native
    capture engine keeps its own copy of the module stack (:mod:`recorder.engine`)."""

    def enter_module(self, path: str, /) -> None: ...

    def exit_module(self) -> None: ...

    def set_depths(self, backward: int, optimizer: int, fresh_state: bool, /) -> None: ...


class PhaseTracker:
    """The module stack, phase flags and backward attribution of one captured step.

    ``install`` enters the global hooks through an ``ExitStack`` and returns it; closing it
    removes every hook and restores ``torch.autograd.backward``/``grad``.
    """

    def __init__(
        self,
        names: Names,
        *,
        on_tensor_named: Callable[[torch.Tensor, Role, str], None],
        on_compiled: Callable[[torch.nn.Module], None],
        listener: TrackerListener | None = None,
    ) -> None:
        self.names = names
        self.stack: list[str] = []
        self.backward_depth = 0
        self.optimizer_depth = 0
        #: True inside an optimizer step that creates state for some parameter (its first step).
        self.fresh_optimizer_state = False
        self._bound_seq: list[int] = []
        self._bound_path: list[str] = []
        self._on_tensor_named = on_tensor_named
        self._on_compiled = on_compiled
        self._listener = listener

    @property
    def module(self) -> str:
        return self.stack[-1] if self.stack else ""

    def phase(self, node: Node | None, args_require_grad: Callable[[], bool]) -> tuple[Phase, str]:
        """Phase and module path of an op about to run; ``node`` is the current autograd node."""
        if node is not None:
            return Phase.BACKWARD, self.backward_module(node)
        if self.backward_depth:
            return Phase.BACKWARD, ""
        if self.stack:
            return Phase.FORWARD, self.stack[-1]
        if self.optimizer_depth:
            return Phase.OPTIMIZER, ""
        if torch.is_grad_enabled() and args_require_grad():
            return Phase.FORWARD, ""
        return Phase.OTHER, ""

    def backward_module(self, node: Node) -> str:
        seq = node._sequence_nr()
        if seq == ACCUMULATE_GRAD_SEQ:
            name = self.accumulate_grad_param(node)
            return name.rpartition(".")[0] if name else ""
        i = bisect.bisect_right(self._bound_seq, seq) - 1
        return self._bound_path[i] if i >= 0 else ""

    def accumulate_grad_param(self, node: Node) -> str | None:
        """FQN of the parameter an ``AccumulateGrad`` node accumulates into, if known."""
        variable = getattr(node, "variable", None)
        if variable is None:
            return None
        return self.names.params.get(variable)

    def _boundary(self) -> None:
        seq = torch._C._autograd._get_sequence_nr()
        self._bound_seq.append(seq)
        self._bound_path.append(self.stack[-1] if self.stack else "")

    def _pre_hook(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        path = self.names.modules.get(module)
        if path is None:
            if not self.stack:
                self.names.add_root(module)
                for p, name in list(self.names.params.items()):
                    self._on_tensor_named(p, Role.PARAMETER, name)
                for b, name in list(self.names.buffers.items()):
                    self._on_tensor_named(b, Role.BUFFER, name)
                path = ""
            else:
                parent = self.stack[-1]
                path = f"{parent}.{type(module).__name__}" if parent else type(module).__name__
        if is_compiled_module(module):
            self._on_compiled(module)
        self.stack.append(path)
        self._boundary()
        if self._listener is not None:
            self._listener.enter_module(path)

    def _post_hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: object) -> None:
        if self.stack:
            self.stack.pop()
        self._boundary()
        if self._listener is not None:
            self._listener.exit_module()

    def _optimizer_pre(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.optimizer_depth += 1
        self.names.optimizers.add(optimizer)
        state = optimizer.state
        self.fresh_optimizer_state = self.fresh_optimizer_state or any(
            not state.get(p)
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        )
        self._depths_changed()
        for p, name in self.names.stepped(optimizer):
            self._on_tensor_named(p, Role.PARAMETER, name)
            if p.grad is not None:
                self._on_tensor_named(p.grad, Role.GRADIENT, f"{name}.grad")
        for t, role, name in self.names.optimizer_state(optimizer):
            self._on_tensor_named(t, role, name)

    def _optimizer_post(
        self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.optimizer_depth = max(0, self.optimizer_depth - 1)
        for t, role, name in self.names.optimizer_state(optimizer):
            self._on_tensor_named(t, role, name)
        if not self.optimizer_depth:
            self.fresh_optimizer_state = False
        self._depths_changed()

    def _depths_changed(self) -> None:
        if self._listener is not None:
            self._listener.set_depths(
                self.backward_depth, self.optimizer_depth, self.fresh_optimizer_state
            )

    @contextmanager
    def _in_backward(self) -> Iterator[None]:
        self.backward_depth += 1
        self._depths_changed()
        try:
            yield
        finally:
            self.backward_depth -= 1
            self._depths_changed()

    def install(self) -> ExitStack:
        """Install the global hooks; close the returned stack to remove all of them."""
        stack = ExitStack()
        mod = torch.nn.modules.module
        stack.callback(mod.register_module_forward_pre_hook(self._pre_hook).remove)
        stack.callback(mod.register_module_forward_hook(self._post_hook, always_call=True).remove)
        stack.callback(register_optimizer_step_pre_hook(self._optimizer_pre).remove)
        stack.callback(register_optimizer_step_post_hook(self._optimizer_post).remove)
        for attr in ("backward", "grad"):
            original = getattr(torch.autograd, attr)
            stack.callback(setattr, torch.autograd, attr, original)
            setattr(torch.autograd, attr, self._wrap_backward(original))
        return stack

    def _wrap_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self._in_backward():
                return original(*args, **kwargs)

        wrapped.__wrapped__ = original  # type: ignore[attr-defined]
        wrapped.__doc__ = original.__doc__
        return wrapped
