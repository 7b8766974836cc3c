"""The native capture engine: the recorder's per-op work in C++ (see ``capture.cpp``).

:func:`choose` decides, once per recording, which engine captures its steps:

* ``engine="python"``: the dispatch mode of :mod:`recorder.capture`.
* ``engine="native"``: this engine, or a :class:`tracefmt.errors.TraceError` saying why it cannot run.
* ``engine="auto"`` (the default): this engine where it can record the job, else the dispatch
  mode, with a warning (once per process, local rank 0) when the engine could not be built.  It
  does not yet record CUDA timings or source lines, and below the Python key it sees what tensor
  subclasses run (FSDP2's DTensor shards, the waits inside ``AsyncCollectiveTensor``) rather
  than the calls made on them, so ``auto`` takes the dispatch mode for processes that use CUDA,
  with ``source=True``, and for distributed jobs unless ``record(model=...)`` shows plain tensors
  only (a DDP job: its c10d collectives are recorded as the dispatch mode records them).

Which engine ran is in each trace's provenance (``"recorder_engine"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import ModuleType
from typing import cast

import torch

from recorder.buildcache import warn_local_rank0
from recorder.engine.extension import load, loaded
from recorder.engine.stepcapture import NativeCapture
from recorder.options import Options
from tracefmt.errors import TraceError

__all__ = ["NativeCapture", "choose", "hidden"]

_warned = False
#: ``torch.cuda.is_initialized``, typed (torch leaves it unannotated)
_cuda_initialized = cast("Callable[[], bool]", torch.cuda.is_initialized)


def _plain(model: torch.nn.Module | None) -> bool:
    """Whether ``model`` is known and holds plain tensors only (DDP's do; FSDP2's are DTensors)."""
    if model is None:
        return False
    tensors = [*model.parameters(), *model.buffers()]
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)


def _python_only(options: Options, distributed: bool, model: torch.nn.Module | None) -> str | None:
    """Why this job needs the dispatch mode, or None."""
    if distributed and not _plain(model):
        # The engine records c10d collectives (a DDP job), but below the Python key it sees what
        # tensor subclasses run (FSDP2's DTensor shards, the functional collectives' waits
        # inside AsyncCollectiveTensor) rather than the calls the user made on them.
        return "a distributed job whose model is not given or holds tensor subclasses"
    if torch.cuda.is_available() and _cuda_initialized():
        return "this process uses CUDA (device timings are recorded by the Python engine)"
    if options.source:
        return "source=True (source lines are recorded by the Python engine)"
    return None


def choose(
    options: Options, *, distributed: bool, model: torch.nn.Module | None = None
) -> tuple[str, ModuleType | None]:
    """``("native", extension)`` or ``("python", None)`` for a recording with ``options`` (of
    ``model``, when ``record()`` was given it)."""
    global _warned
    if options.engine == "python":
        return "python", None
    if options.engine == "native" and options.source:
        raise TraceError(
            "record(engine='native', source=True): the native engine does not record source "
            "lines; use engine='auto' or 'python' to record them."
        )
    if options.engine == "auto" and _python_only(options, distributed, model) is not None:
        return "python", None
    build = load()
    if build.module is not None:
        return "native", build.module
    if options.engine == "native":
        raise TraceError(
            f"record(engine='native'): the native capture engine is not available: {build.reason}. "
            "Use engine='auto' to fall back to the Python engine."
        )
    if not _warned and not build.disabled:
        _warned = True
        warn_local_rank0(
            f"the native capture engine is not available ({build.reason}); recording with the "
            "slower Python engine. Pass engine='python' or set TRACEFMT_NATIVE_ENGINE=0 to "
            "choose it without this warning.",
            stacklevel=4,
        )
    return "python", None


def hidden() -> AbstractContextManager[object]:
    """The recorder's own torch work (light capture's reductions and copies, a debugger opened
    at a trigger) hidden from whichever capture records this thread's step: the Python
    dispatch modes and the native engine.  Costs a check when neither is capturing."""
    ext = loaded()
    native = ext is not None and bool(ext.included())
    python = torch._C._len_torch_dispatch_stack() > 0
    if not native and not python:
        return nullcontext()
    return _hidden(ext if native else None, python)


@contextmanager
def _hidden(ext: ModuleType | None, python: bool) -> Iterator[None]:
    from torch.utils._python_dispatch import _disable_current_modes

    if ext is not None:
        ext.enable(False)
    try:
        with _disable_current_modes() if python else nullcontext():
            yield
    finally:
        if ext is not None:
            ext.enable(True)
