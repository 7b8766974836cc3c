"""A 2-rank DDP training that records every step and loses a rank: run it under torchrun.

``torchrun --standalone --nproc_per_node=2 -m tests.recorder._ddp_child RUN_DIR KILL_RANK KILL_STEP``

Trains a tiny GPT of the example with DistributedDataParallel (gloo) and records every step into
RUN_DIR.  After each ``rec.step()`` it calls ``rec.flush()`` and then prints ``rank R step N``, so a
printed step is one the recorder had committed and fsynced.  ``TORCHELASTIC_RUN_ID`` is set to
``none``, so the run id comes from the c10d store.  Rank KILL_RANK, after printing step
KILL_STEP, SIGKILLs itself; the other rank then fails in its next collective (or torchrun stops it).
"""

from __future__ import annotations

import os
import signal
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import recorder
from recorder.examples.gpt import build


def main(out: str, kill_rank: int, kill_step: int) -> None:
    torch.set_num_threads(1)
    # As torchrun without --standalone or --rdzv-id sets it: the ranks then agree on the run id
    # through the c10d store of the process group.
    os.environ["TORCHELASTIC_RUN_ID"] = "none"
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, opt, data = build(layers=1, embd=16, heads=2, block=16, batch=4, shard=(rank, world))
    with recorder.record(out, model=model, flush_every_steps=1) as rec:
        ddp = DistributedDataParallel(model)
        for step in range(kill_step + 20):
            x, y = data.batch(step)
            loss = ddp(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
            rec.flush()
            print(f"rank {rank} step {step}", flush=True)
            if rank == kill_rank and step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
