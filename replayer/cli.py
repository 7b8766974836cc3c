"""The ``replayer`` command.  Thin: parse, call the library, print.

A ``TraceError`` (``ReplayError`` included) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

from typing import Any

import click
import onnx

import tracefmt
from replayer.export import PHASES, export_step
from tracefmt.errors import TraceError

EXIT_ERROR = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TraceError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(EXIT_ERROR)
        except OSError as e:
            click.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tracefmt.__version__, prog_name="replayer")
def main() -> None:
    """Rebuild, view, check and diff recorded training steps, without torch."""


@main.command()
@click.argument("trace", type=click.Path(exists=True))
@click.option("--step", "step_no", type=int, required=True, help="Step number to export.")
@click.option("--rank", type=int, default=None, help="Rank (default: lowest).")
@click.option("--phase", type=click.Choice(PHASES), default="all", show_default=True)
@click.option("--module", default=None, help="Only ops in modules matching this glob.")
@click.option("--no-values", is_flag=True, help="Leave recorded values out (inputs, not weights).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def export(trace: str, step_no: int, rank: int | None, phase: str, module: str | None,
           no_values: bool, output: str) -> None:
    """Export one recorded step as an ONNX model."""
    with tracefmt.open(trace) as t:
        model, stats = export_step(t, step_no, rank=rank, phase=phase, module=module,
                                   with_values=not no_values)
    onnx.save(model, output)
    click.echo(f"wrote {output}: {stats.ops} ops, {stats.standard} as standard ONNX, "
               f"{stats.ops - stats.standard} as {len(stats.custom)} custom op types")


if __name__ == "__main__":
    main()
