"""What produced a run: the provenance the recorder adds to every rank file (spec/format.md 4.2.1).

A trace that is to be checked years later must say which code, command, environment, packages and
hardware produced it.  :func:`run_provenance` collects, once per rank file when recording starts:

- ``code``: the git commit, branch, dirty flag and a SHA-256 of the uncommitted diff of the work
  tree holding the training script (absent outside a git work tree or without ``git``);
- ``command``: the command line, the Python executable and the working directory;
- ``numerics``: the environment variables that change numerics (cuBLAS workspace, ``PYTORCH_*``,
  thread counts, NCCL algorithm choices, TF32 overrides) and torch's deterministic-algorithm,
  TF32, cuDNN and thread settings;
- ``packages``: every installed Python distribution and its version (about 0.1 s for 100);
- ``hardware``: machine, CPU model and count, GPU names, driver, CUDA, cuDNN and NCCL versions;
- ``capture``: which capture path ran (engine, mode, what was captured).

Nothing here fails a recording: an item that cannot be found is left out (git missing, no
``/proc/cpuinfo``, no NVIDIA driver), and every subprocess has a timeout.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "NUMERICS_ENV",
    "code_provenance",
    "command_provenance",
    "hardware_provenance",
    "numerics_provenance",
    "package_versions",
    "run_provenance",
]

#: Environment variables recorded by name, and by prefix (``PYTORCH_*``...), when set.
NUMERICS_ENV = (
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_LAUNCH_BLOCKING",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_TF32_OVERRIDE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "PYTHONHASHSEED",
    "NCCL_ALGO",
    "NCCL_PROTO",
    "NCCL_MIN_NCHANNELS",
    "NCCL_MAX_NCHANNELS",
    "NCCL_NTHREADS",
    "NCCL_BUFFSIZE",
    "NCCL_TREE_THRESHOLD",
    "NCCL_LL_THRESHOLD",
    "NCCL_NVLS_ENABLE",
    "NCCL_COLLNET_ENABLE",
    "NCCL_P2P_DISABLE",
    "NCCL_SHM_DISABLE",
    "NCCL_IB_DISABLE",
)
_ENV_PREFIXES = ("PYTORCH_", "TORCH_", "CUBLAS", "CUDNN_")
#: Names that may hold a secret are never recorded, whatever their prefix.
_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_KEY\b|APIKEY", re.IGNORECASE)
_TIMEOUT_S = 5.0
_MAX_PACKAGES = 2000
_MAX_TEXT = 200


def _run(args: list[str], cwd: str | os.PathLike[str] | None = None) -> bytes | None:
    """``args``' standard output, or None when the program is missing, fails or hangs."""
    try:
        done = subprocess.run(
            args, cwd=cwd, capture_output=True, timeout=_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace").strip()[:_MAX_TEXT] or None


def _script_dir() -> Path:
    """The folder of the script being run (``sys.argv[0]``), else the working directory."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.is_file():
        return script.resolve().parent
    return Path.cwd()


def _without_credentials(url: str) -> str:
    """A remote URL without the user and password an https URL may carry."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.IGNORECASE)


def code_provenance(where: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The git state of the work tree holding ``where`` (default: the running script's folder):
    commit, branch (None when detached), ``dirty`` (tracked files differ from the commit),
    ``diff_sha256`` (SHA-256 of ``git diff HEAD --binary``, staged and unstaged changes; None when
    clean), the number of untracked files, the remote ``origin`` without credentials, and the
    script's path in the repository.  None outside a git work tree."""
    folder = Path(where) if where is not None else _script_dir()
    top = _text(_run(["git", "rev-parse", "--show-toplevel"], cwd=folder))
    commit = _text(_run(["git", "rev-parse", "HEAD"], cwd=folder))
    if top is None or commit is None:
        return None
    branch = _text(_run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=top))
    diff = _run(["git", "diff", "HEAD", "--binary", "--no-ext-diff", "--no-color"], cwd=top)
    untracked = _run(["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd=top)
    remote = _text(_run(["git", "remote", "get-url", "origin"], cwd=top))
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    in_repo = script is not None and script.is_file() and script.is_relative_to(top)
    return {
        "vcs": "git",
        "root": top,
        "commit": commit,
        "branch": None if branch in (None, "HEAD") else branch,
        "dirty": bool(diff),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
        "diff_bytes": None if diff is None else len(diff),
        "untracked_files": None if untracked is None else untracked.count(b"\0"),
        "remote": None if remote is None else _without_credentials(remote),
        "script": str(script.relative_to(top)) if in_repo and script is not None else None,
    }


#: What stands for a value left out of the recorded command line.
REDACTED = "<redacted>"


def _secret_option(arg: str) -> bool:
    """Whether ``arg`` is an option whose name says it holds a secret (``--hf-token``, ``--api-key``)."""
    if not arg.startswith("-"):
        return False
    name = arg.lstrip("-").split("=", 1)[0].replace("-", "_").upper()
    return bool(_SECRET.search(name)) or name.endswith("KEY")


def redacted_argv(argv: list[str]) -> list[str]:
    """``argv`` with the values of secret-looking options (``--token=X``, ``--api-key X``)
    replaced by :data:`REDACTED`: a trace is shared, a credential must not travel with it."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if _secret_option(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


def command_provenance() -> dict[str, Any]:
    """The command line (secret-looking option values left out), the Python executable and the
    working directory."""
    return {"argv": redacted_argv(list(sys.argv)), "executable": sys.executable, "cwd": os.getcwd()}


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v[:_MAX_TEXT]
        for k, v in sorted(env.items())
        if (k in NUMERICS_ENV or k.startswith(_ENV_PREFIXES)) and not _SECRET.search(k)
    }


def numerics_provenance(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The environment variables that change numerics (those set), and torch's settings that
    do: deterministic algorithms, TF32, cuDNN, float32 matmul precision, threads."""
    backends = torch.backends
    return {
        "env": _environment(os.environ if env is None else env),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": bool(backends.cuda.matmul.allow_tf32),
        "cudnn_enabled": bool(backends.cudnn.enabled),
        "cudnn_deterministic": bool(backends.cudnn.deterministic),
        "cudnn_benchmark": bool(backends.cudnn.benchmark),
        "cudnn_allow_tf32": bool(backends.cudnn.allow_tf32),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def package_versions() -> dict[str, str]:
    """Every installed Python distribution (name -> version), sorted by name, at most 2000."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.setdefault(str(name)[:_MAX_TEXT], str(dist.version)[:_MAX_TEXT])
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower())[:_MAX_PACKAGES])


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()[:_MAX_TEXT] or None
    except OSError:
        pass
    return platform.processor() or None


def hardware_provenance() -> dict[str, Any]:
    """Machine, CPU model and count, and, when CUDA is in use, GPU names, driver, CUDA, cuDNN and
    NCCL versions.  CUDA is not initialised here: GPU names are read only when the program has
    initialised it (a CPU-only recording stays free of a CUDA context)."""
    out: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "cudnn": None,
        "nccl": None,
        "gpus": [],
        "driver": None,
    }
    try:
        if torch.backends.cudnn.is_available():  # type: ignore[no-untyped-call]
            out["cudnn"] = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            nccl = torch.cuda.nccl.version()  # type: ignore[no-untyped-call]
            out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            driver = _text(_run(query))
            out["driver"] = None if driver is None else driver.splitlines()[0]
    except (RuntimeError, AttributeError):  # a broken CUDA install: what was found so far
        pass
    return out


def run_provenance(engine: str, options: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything above, as the provenance keys of a rank file, with ``capture`` from
    :func:`capture_provenance`; the keys of ``extra`` (the caller's ``provenance_extra``) win."""
    out: dict[str, Any] = {
        "command": command_provenance(),
        "numerics": numerics_provenance(),
        "packages": package_versions(),
        "hardware": hardware_provenance(),
        "capture": capture_provenance(engine, options),
    }
    code = code_provenance()
    if code is not None:
        out["code"] = code
    return {**out, **(extra or {})}


def capture_provenance(engine: str, options: Any) -> dict[str, Any]:
    """Which capture path ran: the engine (``"native"``: the C++ capture, ``"python"``: the
    dispatch mode), the recording mode, what was captured, which values and histogram bins.
    ``options`` is a :class:`recorder.options.Options`."""
    values = options.values
    return {
        "engine": engine,
        "mode": options.mode,
        "capture": sorted(options.capture),
        "values": None
        if values is None
        else {
            "roles": None if values.roles is None else sorted(values.roles),
            "modules": None if values.modules is None else list(values.modules),
            "ops": None if values.ops is None else list(values.ops),
        },
        "hist_bins": options.hist_bins,
    }
