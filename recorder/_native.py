"""A one-pass statistics kernel for CPU tensors, compiled from C on first use.

Why: the torch path of :mod:`recorder.stats` reads each tensor five times (fingerprint, ``aminmax``,
the ``-0.0`` check and zero count, sum, norm), each pass a separate kernel.  Inside the FACTS GPT
step (440 float32 tensors, ~490 MB) that was most of the recorder's cost.
``_fused_stats.c`` computes the whole row in one pass over the bytes, on up to
``torch.get_num_threads()`` threads.

It is plain C99 (no torch headers, no build tool): the first recording process compiles it with
``$CC``, ``cc``, ``gcc`` or ``clang`` in about a second and caches the library under
``$TRACEFMT_CACHE_DIR`` (default ``~/.cache/tracefmt``), keyed by the source, the compiler's
version, the flags and the CPU's vector level, so machines sharing a home directory never load
each other's builds.  Without a compiler, or with ``TRACEFMT_NATIVE_STATS=0``, the torch path
computes the same row (within spec section 5.7's accuracy) more slowly, and a warning says so once.

Float flags: sums may be reassociated (they are blocked sums anyway) and min/max assume no NaN;
zero, NaN and infinity are integer tests on the bits, and a non-finite element enters the float
code as 0 or ``+-FLT_MAX`` (chosen on the bits), so no result depends on those flags.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["FusedStats", "available", "fused_stats"]

_SOURCE = Path(__file__).with_name("_fused_stats.c")
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno",
          "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros", "-ffinite-math-only"]
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


class _Row(ctypes.Structure):
    _fields_ = [("sum", ctypes.c_double), ("sumsq", ctypes.c_double), ("min", ctypes.c_double),
                ("max", ctypes.c_double), ("nonzero", ctypes.c_int64), ("nan", ctypes.c_int64),
                ("inf", ctypes.c_int64), ("fingerprint", ctypes.c_uint64)]


@dataclass(frozen=True)
class FusedStats:
    """One tensor's pass: moments over the finite elements (``min``/``max`` are ``+-FLT_MAX``
    when there is none, and do not tell ``-0.0`` from ``0.0``); ``fingerprint`` is unsigned."""

    sum: float
    sumsq: float
    min: float
    max: float
    nonzero: int
    nan: int
    inf: int
    fingerprint: int


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    explicit = os.environ.get("TRACEFMT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tracefmt"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _vector_flags() -> list[str]:
    if platform.machine() in ("x86_64", "AMD64") and \
            torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return ["-mavx2", "-mfma"]
    return []


def _openmp_flags() -> list[str]:
    """``-fopenmp`` where torch runs libgomp: the kernel then links the same ``libgomp.so.1``
    (the loader reuses the copy torch loaded) and splits its work over torch's worker threads.
    Threads of its own would fight those workers, which spin for a while after each op."""
    lib = Path(torch.__file__).parent / "lib"
    return ["-fopenmp"] if sys.platform == "linux" and (lib / "libgomp.so.1").exists() else []


def _build() -> ctypes.CDLL | None:
    """Compile (or find in the cache) and load the kernel; None, with a warning, if impossible."""
    if os.environ.get("TRACEFMT_NATIVE_STATS", "1") == "0" or sys.byteorder != "little":
        return None
    cc = _compiler()
    if cc is None:
        warnings.warn("recorder: no C compiler found ($CC, cc, gcc, clang); CPU statistics use "
                      "the slower torch path. Install one (e.g. gcc), or set "
                      "TRACEFMT_NATIVE_STATS=0 to silence this.", stacklevel=4)
        return None
    flags = [*_FLAGS, *_vector_flags(), *_openmp_flags()]
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30,
                                 check=False).stdout
        source = _SOURCE.read_bytes()
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(flags).encode(),
                                         platform.machine().encode()])).hexdigest()[:20]
        cache = _cache_dir()
        target = cache / f"fused_stats-{key}.so"
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=".fused_stats-", suffix=".so")
            os.close(fd)
            try:
                proc = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE)], capture_output=True,
                                      text=True, timeout=300, check=False)
                if proc.returncode != 0:
                    raise OSError(f"{cc} failed: {proc.stderr.strip()[-500:]}")
                os.replace(tmp, target)  # atomic: concurrent ranks build the same file
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        warnings.warn(f"recorder: could not build the one-pass statistics kernel ({e}); CPU "
                      "statistics use the slower torch path. Set TRACEFMT_NATIVE_STATS=0 to "
                      "silence this.", stacklevel=4)
        return None
    lib.tf_stats_run.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                                 ctypes.POINTER(_Row)]
    lib.tf_stats_run.restype = ctypes.c_int
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _lib = _build()
                _tried = True
    return _lib


def available() -> bool:
    """Whether the kernel is loaded (building it now if this process has not tried yet)."""
    return _library() is not None


def fused_stats(x: torch.Tensor) -> FusedStats | None:
    """The pass over ``x`` (a contiguous float32 or bfloat16 CPU tensor); None when the kernel is
    unavailable or ``x`` is not such a tensor."""
    code = _DTYPES.get(x.dtype)
    lib = _library()
    if lib is None or code is None or x.device.type != "cpu" or not x.is_contiguous():
        return None
    row = _Row()
    if lib.tf_stats_run(x.data_ptr(), x.numel(), code, torch.get_num_threads(),
                        ctypes.byref(row)) != 0:
        return None
    return FusedStats(row.sum, row.sumsq, row.min, row.max, row.nonzero, row.nan, row.inf,
                      row.fingerprint)
