"""The commands that record a step again in full, from the user's checkpoint, and look at it.

A flight recorder keeps the steps before a trigger, but with statistics only (values cost too
much to keep in a ring).  To see every number of the step, the user restores the checkpoint
taken before it and runs again with :func:`recorder.record` on a schedule of exactly that step
and the one before it (to diff them), full values kept for the module where it started.
"""

from __future__ import annotations

from pathlib import Path

from replayer.why.explained import Rerecord

__all__ = ["rerecord"]


def _out_dir(trace: str, step: int) -> str:
    p = Path(trace)
    base = p.parent if p.suffix == ".h5" else p
    return f"{str(base).rstrip('/')}-step{step}"


def _values(module: str | None) -> str:
    if not module:
        return '"all"'
    return f"recorder.select(modules=[{module!r}, {module + '.*'!r}])"


def rerecord(trace: str, step: int, rank: int, world_size: int, module: str | None) -> Rerecord:
    """The snippet and commands for ``step`` of the run in ``trace`` (rank ``rank`` of
    ``world_size``), values kept for ``module`` and its submodules (all without one)."""
    out = _out_dir(trace, step)
    before = max(step - 1, 0)
    steps = f"[{before}, {step}]" if before < step else f"[{step}]"
    launch = (
        f"# Launch it as the original run (torchrun, {world_size} ranks): every rank records.\n"
        if world_size > 1
        else ""
    )
    python = (
        "import recorder\n"
        "\n"
        f"# Restore model, optimizer and data position from your checkpoint taken before step {step};\n"
        "# set CKPT to the first step it resumes at.\n"
        f"{launch}"
        f"CKPT = {before}\n"
        "with recorder.record(\n"
        f"    {out!r},\n"
        "    model=model,\n"
        f"    schedule=recorder.schedule(steps={steps}),\n"
        "    start_step=CKPT,\n"
        f"    values={_values(module)},\n"
        "    overwrite=True,\n"
        ") as rec:\n"
        f"    for step in range(CKPT, {step + 1}):\n"
        "        loss = train_step(step)  # your step: forward, backward, optimizer\n"
        "        rec.step(loss=loss)\n"
    )
    at = f"@{rank}" if world_size > 1 else ""
    rank_opt = f" --rank {rank}" if world_size > 1 else ""
    module_opt = f" --module '{module}*'" if module else ""
    commands = (
        f"tracefmt ls {out}",
        f"tracefmt show {out} --step {step}{rank_opt}{module_opt}",
        *((f"replayer diff {out}:{before}{at} {out}:{step}{at}",) if before < step else ()),
        f"replayer check {out} --step {step}{rank_opt}{module_opt}",
    )
    return Rerecord(python, commands)
