"""A 2-rank DDP training of the GPT example in which one rank dies in the middle of a step.

``torchrun --standalone --nproc_per_node=2 -m tests.replayer.ranks._killed_child RUN RANK STEP``

Every rank records every step into RUN and, after ``rec.step()``, calls ``rec.flush()`` and prints
``rank R step N``: a printed step is committed and on disk.  Rank RANK runs step STEP up to and
including the optimizer step (its all-reduce has met the other ranks'), waits (on the c10d store,
not a collective) until every other rank has committed STEP, and SIGKILLs itself before its own
step is recorded: its last committed step is STEP - 1, while the other ranks have STEP and then
fail in the next step's all-reduce (gloo: the peer is gone).
"""

from __future__ import annotations

import datetime
import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import recorder
from recorder.examples.gpt import build


def _committed(rank: int, step: int) -> str:
    return f"test/committed/{rank}/{step}"


def main(out: str, kill_rank: int, kill_step: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()
    model, opt, data = build(layers=1, embd=16, heads=2, block=16, batch=4, shard=(rank, world))
    with recorder.record(out, model=model, flush_every_steps=1) as rec:
        ddp = DistributedDataParallel(model)
        for step in range(kill_step + 5):
            x, y = data.batch(step)
            loss = ddp(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if rank == kill_rank and step == kill_step:
                store.wait([_committed(r, step) for r in range(world) if r != rank])
                os.kill(os.getpid(), signal.SIGKILL)
            rec.step(loss=loss)
            rec.flush()
            print(f"rank {rank} step {step}", flush=True)
            store.set(_committed(rank, step), "1")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
