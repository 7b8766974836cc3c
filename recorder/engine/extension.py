"""Compile the native capture engine (``capture.cpp``) on first use, and cache it.

It is a C++ torch extension, so it must match the torch it runs in: the cache key holds the
source, the torch version and build (its C++ ABI, CUDA/HIP version), the Python version and the
machine.  The first recording process on a machine builds it (about 40 s on 2 cores, with a
message saying so), under a lock so the ranks of a job build once; later processes load it in
well under a second.  When it cannot be built (no C++ compiler, a torch whose headers it does not
compile against) or is switched off with ``TRACEFMT_NATIVE_ENGINE=0``, :func:`load` says why and
the recorder uses its Python dispatch mode instead.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from recorder.buildcache import cache_dirs, locked

__all__ = ["EngineBuild", "load", "loaded"]

_SOURCE = Path(__file__).with_name("capture.cpp")
_FLAGS = ["-O2", "-fvisibility=hidden"]


@dataclass(frozen=True)
class EngineBuild:
    """The loaded extension, or why there is none (``reason``)."""

    module: ModuleType | None
    reason: str = ""
    #: switched off by the user (``TRACEFMT_NATIVE_ENGINE=0``): nothing to warn about
    disabled: bool = False


_lock = threading.Lock()
_result: EngineBuild | None = None


def _key() -> str:
    parts = [
        _SOURCE.read_bytes(),
        torch.__version__.encode(),
        str(torch._C._GLIBCXX_USE_CXX11_ABI).encode(),
        str(torch.version.cuda or torch.version.hip or "cpu").encode(),
        sys.version.encode(),
        platform.machine().encode(),
        " ".join(_FLAGS).encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _build() -> EngineBuild:
    if os.environ.get("TRACEFMT_NATIVE_ENGINE", "1") == "0":
        return EngineBuild(None, "switched off by TRACEFMT_NATIVE_ENGINE=0", disabled=True)
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        return EngineBuild(None, f"no C++ compiler ({compiler!r} not found; install g++ or set $CXX)")
    try:
        from torch.utils import cpp_extension
    except ImportError as e:  # a torch without its extension builder
        return EngineBuild(None, f"torch.utils.cpp_extension is not available ({e})")
    key = _key()
    name = f"tracefmt_engine_{key}"
    directory = _directory(key)
    if directory is None:
        return EngineBuild(None, "no writable cache directory (set $TRACEFMT_CACHE_DIR)")
    with locked(directory):
        if not (directory / f"{name}.so").exists() and os.environ.get("LOCAL_RANK", "0") == "0":
            print(
                f"recorder: building the native capture engine for torch {torch.__version__} "
                f"in {directory} (about a minute, once per torch version)...",
                file=sys.stderr,
                flush=True,
            )
        try:
            module = cpp_extension.load(
                name,
                [str(_SOURCE)],
                extra_cflags=_FLAGS,
                build_directory=str(directory),
                verbose=False,
            )
        except (OSError, RuntimeError, ImportError) as e:
            return EngineBuild(None, f"it could not be built: {_first_error(str(e))}")
    return EngineBuild(module)


def _directory(key: str) -> Path | None:
    """The first cache directory this process can write, with the build's own folder made."""
    for cache in cache_dirs():
        directory = cache / "engine" / key
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    return None


def _first_error(message: str) -> str:
    """The compiler's first ``error:`` line of a failed build, else the message's last line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line[-300:]
    return lines[-1][-300:] if lines else "unknown error"


def loaded() -> ModuleType | None:
    """The engine if this process has loaded it already (never builds it)."""
    result = _result
    return None if result is None else result.module


def load() -> EngineBuild:
    """The native engine, building it in this process's first call; never raises."""
    global _result
    if _result is None:
        with _lock:
            if _result is None:
                _result = _build()
    return _result
