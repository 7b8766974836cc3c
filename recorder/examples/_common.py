"""The training loop and command line the examples share."""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import recorder

Batch = tuple[torch.Tensor, torch.Tensor]


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every example takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=20, help="training steps to run")
    p.add_argument("--out", default="runs/demo", help="run directory to record into")
    p.add_argument("--every", type=int, default=1, help="record one step in N")
    p.add_argument("--off", action="store_true", help="run without the recorder (for timing)")
    p.add_argument("--no-stats", action="store_true", help="record the graph only")
    p.add_argument(
        "--values",
        choices=["none", "all", "leaves"],
        default="none",
        help="record full values: of every tensor (all), or of what each step starts from "
        "(leaves: parameters, optimizer state, batch, random draws; replayer check --chain)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing trace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the timing summary as JSON")
    p.add_argument(
        "--mode",
        choices=["record", "flight"],
        default="record",
        help="record: write the steps --every picks; flight: capture every step, keep the last "
        "--ring in memory and write them when a trigger fires (NaN/Inf, a loss spike, an error)",
    )
    p.add_argument("--ring", type=int, default=8, help="flight mode: full steps kept in memory")
    g = p.add_argument_group("anomalies (test and debug aids: see the flight recorder fire)")
    g.add_argument(
        "--inject-nan",
        type=_rank_step_or_step,
        metavar="[RANK:]STEP",
        help="set one element of the model's first matrix weight (past its embeddings) to Inf "
        "before the forward of STEP (on RANK only, under torchrun)",
    )
    g.add_argument(
        "--inject-spike",
        type=int,
        metavar="STEP",
        help="multiply the loss of STEP by 20 before its backward (a loss and gradient spike)",
    )
    return p


def _rank_step_or_step(text: str) -> tuple[int | None, int]:
    if ":" in text:
        return _rank_step(text)
    try:
        return None, int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not STEP or RANK:STEP.") from None


def _inject_nan(args: argparse.Namespace, step: int, rank: int, model: torch.nn.Module) -> None:
    """``--inject-nan``: one weight element set to Inf, as a bad update or a bit flip would."""
    if args.inject_nan is None:
        return
    at_rank, at_step = args.inject_nan
    if step != at_step or at_rank not in (None, rank):
        return
    weight = next(
        p
        for n, p in model.named_parameters()
        if p.dim() >= 2 and "emb" not in n and "wte" not in n and "wpe" not in n
    )
    with torch.no_grad():
        weight.view(-1)[0] = float("inf")


def run(
    args: argparse.Namespace,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Batch],
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    *,
    name: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    world: Distributed | None = None,
    faults: Faults | None = None,
) -> dict[str, Any]:
    """Train ``args.steps`` steps, recording them unless ``--off``; returns a timing summary.

    ``scheduler`` is stepped after the optimizer, and its learning rate recorded as a scalar.
    ``wrap`` (e.g. ``DistributedDataParallel``) is applied to ``model`` inside the recording, so
    its construction (DDP's parameter broadcast) is part of step 0; the recorder names
    parameters and modules from the unwrapped ``model``.  ``world``: this rank under torchrun
    (only rank 0 prints).  ``faults``: what this rank does wrong on purpose (``--extra-allreduce``,
    ``--tamper-grad``), to see ``replayer ranks`` find it.
    """
    console = Console(stderr=True, quiet=args.quiet)
    times: list[float] = []
    with _maybe_record(args, model) as rec, _progress(console) as progress:
        trained = model if wrap is None else wrap(model)
        task = progress.add_task(name, total=args.steps, loss=float("nan"))
        for step in range(args.steps):
            t0 = time.perf_counter()
            batch = batches(step)
            _inject_nan(args, step, 0 if world is None else world.rank, model)
            trained.train()
            loss = loss_fn(trained, batch)
            if step == args.inject_spike:
                loss = loss * 20
            loss.backward()  # type: ignore[no-untyped-call]
            if faults is not None and world is not None:
                faults.after_backward(step, world.rank, model)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scalars = {}
            if scheduler is not None:
                scheduler.step()
                scalars["lr"] = scheduler.get_last_lr()[0]
            if rec is not None:
                rec.step(loss=loss, **scalars)
            times.append(time.perf_counter() - t0)
            progress.update(task, advance=1, loss=float(loss.detach()))
    if faults is not None and world is not None:
        faults.after_recording(world.rank, world.device)
    steady = sorted(times[1:] or times)
    summary = {
        "example": name,
        "steps": args.steps,
        "recorded": not args.off,
        "out": None if args.off else args.out,
        "median_step_ms": round(1000 * steady[len(steady) // 2], 3),
        "mean_step_ms": round(1000 * sum(steady) / len(steady), 3),
        "final_loss": round(float(loss.detach()), 5),
    }
    if world is not None:
        summary["world_size"] = world.world_size
        if world.rank != 0:
            return summary
    if args.json:
        print(json.dumps(summary))
    else:
        where = "not recorded" if args.off else f"recorded into {args.out}"
        console.print(
            f"{name}: {args.steps} steps, median {summary['median_step_ms']} ms/step, "
            f"final loss {summary['final_loss']}, {where}",
            highlight=False,
        )
    return summary


def _maybe_record(
    args: argparse.Namespace, model: torch.nn.Module
) -> AbstractContextManager[recorder.Recorder | None]:
    if args.off:
        return nullcontext()
    capture = ("graph",) if args.no_stats else ("graph", "stats")
    flight = args.mode == "flight"
    return recorder.record(
        args.out,
        schedule=recorder.schedule(steps=()) if flight else recorder.schedule(every=args.every),
        model=model,
        capture=capture,
        values=None if args.values == "none" else args.values,
        overwrite=args.overwrite,
        mode=args.mode,
        ring_steps=args.ring,
    )


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=console.quiet,
    )


@dataclass(frozen=True)
class Distributed:
    """This process's rank in a ``torchrun`` job and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device


def init_distributed(args: argparse.Namespace) -> Distributed:
    """``init_process_group`` for ``--ddp`` (gloo on CPU, nccl on CUDA, one GPU per local rank).

    Called before ``recorder.record()``, so the ranks agree on one run id through the process
    group's store.  Ranks other than 0 run quietly: no progress bar, no warnings.
    """
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit(
            "--ddp runs under torchrun, e.g. `torchrun --standalone --nproc_per_node=2 -m "
            "recorder.examples.gpt --ddp`; RANK and WORLD_SIZE are not set."
        )
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if rank != 0:
        args.quiet = True
        warnings.simplefilter("ignore")
    return Distributed(rank, dist.get_world_size(), device)


def _rank_step(text: str) -> tuple[int, int]:
    rank, sep, step = text.partition(":")
    if not sep or not rank.isdigit() or not step.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not RANK:STEP (two integers, e.g. 1:2).")
    return int(rank), int(step)


def add_fault_args(p: argparse.ArgumentParser) -> None:
    """Faults one rank injects on purpose: test and debug aids for ``replayer ranks`` (with --ddp)."""
    g = p.add_argument_group(
        "faults (test and debug aids, with --ddp: make the ranks disagree on purpose, to see "
        "`replayer ranks` find it)"
    )
    g.add_argument(
        "--extra-allreduce",
        type=_rank_step,
        metavar="RANK:STEP",
        help="RANK issues one extra all_reduce (of 4 ones) after the backward of STEP, which must "
        "be the last step; the other ranks issue its partner after the recording, so the job "
        "does not hang",
    )
    g.add_argument(
        "--tamper-grad",
        type=_rank_step,
        metavar="RANK:STEP",
        help="RANK adds 1e-3 to the gradient of the model's last parameter after the backward of "
        "STEP, before the optimizer step",
    )
    g.add_argument(
        "--unsynced-init",
        action="store_true",
        help="each rank initialises its model with its own seed (seed + rank) and DDP does not "
        "broadcast rank 0's parameters (init_sync=False)",
    )


@dataclass(frozen=True)
class Faults:
    """What one rank does wrong on purpose (see :func:`add_fault_args`)."""

    extra_allreduce: tuple[int, int] | None = None
    tamper_grad: tuple[int, int] | None = None
    unsynced_init: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, world: Distributed) -> Faults | None:
        """The faults asked for (``None``: none), checked against the run; ``SystemExit`` with
        a sentence when one cannot apply."""
        faults = cls(args.extra_allreduce, args.tamper_grad, args.unsynced_init)
        if faults == cls():
            return None
        for flag, value in (
            ("--extra-allreduce", faults.extra_allreduce),
            ("--tamper-grad", faults.tamper_grad),
        ):
            if value is None:
                continue
            rank, step = value
            if rank >= world.world_size or step >= args.steps:
                raise SystemExit(
                    f"{flag} {rank}:{step} is outside the run: ranks 0..{world.world_size - 1}, "
                    f"steps 0..{args.steps - 1}."
                )
        if faults.extra_allreduce is not None and faults.extra_allreduce[1] != args.steps - 1:
            raise SystemExit(
                f"--extra-allreduce {faults.extra_allreduce[0]}:{faults.extra_allreduce[1]}: the "
                f"step must be the last one ({args.steps - 1}); in an earlier step the extra "
                "all_reduce would pair with another rank's next collective and break the job."
            )
        return faults

    def after_backward(self, step: int, rank: int, model: torch.nn.Module) -> None:
        """Between ``backward()`` and ``optimizer.step()`` of ``step`` on ``rank``."""
        import torch.distributed as dist

        if self.tamper_grad == (rank, step):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grads[-1].add_(1e-3)
        if self.extra_allreduce == (rank, step):
            dist.all_reduce(torch.ones(4, device=next(model.parameters()).device))

    def after_recording(self, rank: int, device: torch.device) -> None:
        """The partner of the extra all_reduce, on every other rank, outside the recording."""
        import torch.distributed as dist

        if self.extra_allreduce is not None and self.extra_allreduce[0] != rank:
            dist.all_reduce(torch.ones(4, device=device))


def finish_distributed() -> None:
    """Leave the process group (after the recorder has closed its files)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def setup(args: argparse.Namespace) -> torch.device:
    """Seed, thread count and device from the arguments."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def example_main(
    description: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    make: Callable[[argparse.Namespace, torch.device], tuple[Any, ...]],
    *,
    name: str,
    argv: Sequence[str] | None = None,
) -> int:
    """The ``main`` of an example: parse, ``make(args, device)`` -> ``(model, optimizer,
    batches, loss_fn[, scheduler])``, train and record."""
    p = parser(description)
    add_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    model, optimizer, batches, loss_fn, *rest = make(args, device)
    run(args, model, optimizer, batches, loss_fn, name=name, scheduler=rest[0] if rest else None)
    return 0
