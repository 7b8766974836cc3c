"""Two flight-mode ranks where only rank 1 fires: ``torchrun -m tests.recorder._remote_child DIR``.

No DDP, so nothing spreads between the ranks but the recorder's own post: rank 1's user trigger
fires at step 5, and rank 0 must write its ring at its own step 5 (if the post is there by then:
rank 1 may run steps ahead, and its post waits for rank 0 to reach step 5) or 6, with a
``remote_trigger`` event naming rank 1.  A barrier after step 5 makes rank 0's step 6 come
after rank 1's post.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import recorder
from recorder.examples import gpt


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model, opt, data = gpt.build(layers=1, embd=32, heads=2, block=16, batch=8)
    fire = lambda step, scalars: rank == 1 and step == 5  # noqa: E731
    with recorder.record(out, model=model, mode="flight", ring_steps=3, trigger=fire) as rec:
        for step in range(9):
            x, y = data.batch(step)
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
            if step == 5:
                dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
