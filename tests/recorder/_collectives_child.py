"""One rank of ``tests/recorder/test_collectives.py``: run under ``torchrun --nproc_per_node=2``.

``python _collectives_child.py SCENARIO RUN_DIR``; SCENARIO is ``explicit`` (one recorded step of
explicit collectives, point-to-point ops and a functional all-reduce), ``ddp`` (two recorded DDP
steps of a tiny MLP) or ``fsdp`` (two recorded FSDP2 steps).  Each rank records into RUN_DIR and
writes ``RUN_DIR/rank{R}.json`` with what the test checks against (results the ranks computed).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

import recorder
from recorder.options import Engine

#: The capture engine (the third argument; default "auto", which takes the Python one here).
ENGINE: Engine = "auto"


def _explicit(run: Path, rank: int, world: int) -> dict[str, Any]:
    sub = dist.new_group([1])  # every rank creates it; only rank 1 is a member
    seen: dict[str, Any] = {}
    with recorder.record(
        run, rank=rank, world_size=world, capture=("graph", "stats"), engine=ENGINE
    ) as rec:
        summed = torch.full((4,), float(rank + 1))
        dist.all_reduce(summed)
        averaged = torch.full((4,), float(rank + 1))
        dist.all_reduce(averaged, op=dist.ReduceOp.AVG)
        sent = torch.full((3,), float(10 * rank))
        dist.broadcast(sent, src=1)
        gathered = [torch.empty(2) for _ in range(world)]
        dist.all_gather(gathered, torch.full((2,), float(rank)))
        into = torch.empty(2 * world)
        dist.all_gather_into_tensor(into, torch.full((2,), float(rank)))
        scattered = torch.empty(2)
        dist.reduce_scatter_tensor(scattered, torch.arange(4.0) + rank)
        dist.barrier()
        box = torch.full((5,), 7.0) if rank == 0 else torch.zeros(5)
        if rank == 0:
            dist.send(box, dst=1)
        else:
            dist.recv(box, src=0)
        if rank == 1:
            dist.broadcast(torch.ones(2), src=1, group=sub)
        world_group: Any = dist.group.WORLD
        pending = funcol.all_reduce(torch.full((3,), float(rank + 2)), "sum", world_group)
        waited = funcol.wait_tensor(pending)  # type: ignore[no-untyped-call]
        rec.step()
    seen["summed"] = summed.tolist()
    seen["averaged"] = averaged.tolist()
    seen["sent"] = sent.tolist()
    seen["into"] = into.tolist()
    seen["scattered"] = scattered.tolist()
    seen["box"] = box.tolist()
    seen["waited"] = waited.tolist()
    return seen


def _ddp(run: Path, rank: int, world: int) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.0001)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    grads: list[dict[str, list[float]]] = []
    with recorder.record(
        run, rank=rank, world_size=world, model=ddp, capture=("graph", "stats"), engine=ENGINE
    ) as rec:
        for step in range(2):  # step 1 rebuilds the buckets
            torch.manual_seed(100 + 10 * step + rank)  # each rank its own batch
            x = torch.randn(3, 4)
            loss = ddp(x).square().mean()
            loss.backward()
            grads.append(
                {n: p.grad.flatten().tolist() for n, p in model.named_parameters() if p.grad is not None}
            )
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    return {
        "grads": grads,
        "params": {n: p.detach().flatten().tolist() for n, p in model.named_parameters()},
    }


def _fsdp(run: Path, rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with recorder.record(
        run, rank=rank, world_size=world, model=model, capture=("graph", "stats"), engine=ENGINE
    ) as rec:
        for step in range(2):
            torch.manual_seed(100 + 10 * step + rank)
            loss = model(torch.randn(3, 4)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    full = {n: p.full_tensor() for n, p in model.named_parameters()}  # type: ignore[attr-defined]
    return {"params": {n: t.flatten().tolist() for n, t in full.items()}}


def main() -> None:
    global ENGINE
    scenario, run = sys.argv[1], Path(sys.argv[2])
    if len(sys.argv) > 3:
        ENGINE = {"auto": "auto", "native": "native", "python": "python"}[sys.argv[3]]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        seen = {"explicit": _explicit, "ddp": _ddp, "fsdp": _fsdp}[scenario](run, rank, world)
        (run / f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
