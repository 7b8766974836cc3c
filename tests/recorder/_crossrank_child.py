"""One rank of ``tests/recorder/test_crossrank.py``: run under ``torchrun --nproc_per_node=2``.

``python _crossrank_child.py OUT_DIR``.  Forty simulated training steps, each an all-reduce (the
training's own collective) followed by what ``rec.step()`` does: rank 1 posts a trigger at
step 20, rank 0 posts a second one at step 25, both post at step 30; every rank polls at every
step.  Each rank writes ``OUT_DIR/rank{R}.json``: what it polled at which step, the run's first
post, what a rank of another run sees, and the cost of a poll that finds nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recorder.flight.remote import RemoteTriggers

POLLS = 2000  # timed polls that find nothing


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    remote = RemoteTriggers.from_default_group("test-run")
    other_run = RemoteTriggers.from_default_group("other-run")
    assert remote is not None
    assert other_run is not None
    report: dict[str, Any] = {"rank": rank, "type": type(remote.store).__name__}

    for _ in range(100):  # warm the connection
        remote.poll()
    start = time.perf_counter()
    for _ in range(POLLS):
        assert remote.poll() is None
    report["poll_us"] = (time.perf_counter() - start) / POLLS * 1e6
    dist.barrier()

    seen: list[dict[str, Any]] = []
    posted: list[Any] = []
    grad = torch.ones(4)
    for step in range(40):
        dist.all_reduce(grad)  # the training step's collective; the triggers add none
        if rank == 1 and step == 20:
            posted.append(remote.post(step, "nonfinite_created", "module 'h.1' made 3 NaN"))
        if rank == 0 and step == 25:
            posted.append(remote.post(step, "loss_spike", "the loss 9.1 is 11 robust sd above"))
        if step == 30:
            posted.append(remote.post(step, "user_trigger", f"rank {rank} says stop"))
        while (hit := remote.poll()) is not None:
            seen.append({"at": step, **hit._asdict()})
    dist.barrier()
    while (hit := remote.poll()) is not None:  # a post of step 30 may land after our last poll
        seen.append({"at": 40, **hit._asdict()})
    first = remote.first()
    report["seen"] = seen
    report["posted"] = [p._asdict() if p is not None else None for p in posted]
    report["first"] = first._asdict() if first is not None else None
    report["other_run"] = other_run.poll()
    report["event"] = first.event().message if first is not None else None
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
