"""Launching a 2-rank job the way a user does, for the distributed tests.

``torchrun --standalone --nproc_per_node=2`` (as ``python -m torch.distributed.run``), gloo on
CPU, bound to the loopback interface, one OpenMP thread per rank, the repository importable, and
no rank variables inherited from an outer job.  A hang fails at ``timeout`` instead of blocking.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
