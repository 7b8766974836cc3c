"""Launching a 2-rank job the way a user does, for the distributed tests.

``torchrun --standalone --nproc_per_node=2`` (as ``python -m torch.distributed.run``), gloo on
CPU, bound to the loopback interface, one OpenMP thread per rank, the repository importable, and
no rank variables inherited from an outer job.  A hang fails at ``timeout`` instead of blocking.

:func:`torchrun_ok` is for jobs that must succeed: it fails the test with the lines of the ranks'
output that say why (torchrun's own summary only names the signal), and runs the job once more
when gloo itself aborted a rank.  Gloo's TCP transport throws from its own threads when a peer's
connection resets while it connects or tears down, and that ends the process in ``std::terminate``
(SIGABRT; pytorch/gloo#514): a fault of the loaded machine, not of the code under test.  Any other
failure, and a second gloo abort, fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Lines of a failed job's output worth showing: a rank's traceback, a C++ abort, glibc's report.
_TELLING = re.compile(
    r"Traceback|Error|error:|terminate called|what\(\):|Abort|abort|corrupt|free\(\)|"
    r"exitcode|Signal \d+|Fatal Python error|^\s+File "
)
#: Gloo's abort from its transport threads, or a process ended by ``std::terminate`` with no
#: exception, as gloo jobs are at teardown (pytorch/pytorch#190489; seen once in three fresh-clone
#: runs here, in the FSDP2 fixture of tests/recorder/test_collectives.py, not reproduced).
_GLOO_ABORT = re.compile(
    r"(terminate called[^\n]*gloo|gloo::\w+Exception|gloo/transport|"
    r"terminate called without an active exception)"
)


def torchrun(args: list[str], timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (a script and its arguments, or ``-m module ...``) on 2 local ranks."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def failure_text(done: subprocess.CompletedProcess[str], limit: int = 6000) -> str:
    """Why a job failed: the telling lines of its stderr (each rank's), then the tail of both streams."""
    telling = [line for line in done.stderr.splitlines() if _TELLING.search(line)]
    text = "\n".join(telling)[-limit:]
    return (
        f"torchrun exited with {done.returncode}; the ranks said:\n{text}\n"
        f"--- stdout tail ---\n{done.stdout[-1500:]}\n--- stderr tail ---\n{done.stderr[-2500:]}"
    )


def torchrun_ok(
    args: list[str], timeout: float = 150, *, out: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`torchrun` for a job that must succeed; fails the test with the ranks' reasons.
    ``out``: the directory the job writes, removed before the one rerun after a gloo abort (the
    aborted job may have written it already)."""
    try:
        done = torchrun(args, timeout)
        if done.returncode != 0 and _GLOO_ABORT.search(done.stderr):
            print(f"gloo aborted a rank; running the job again:\n{failure_text(done)}", file=sys.stderr)
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
            done = torchrun(args, timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun {args} hung past {timeout} s; stderr:\n{str(e.stderr)[-3000:]}")
    if done.returncode != 0:
        pytest.fail(failure_text(done))
    return done
