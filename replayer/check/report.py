"""The results of ``replayer check``: one line per op, fractions per phase, JSON and rich output."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tracefmt.jsonout import plain

CHECKED, SKIPPED, FAILED = "checked", "skipped", "failed"
PHASE_ORDER = ("other", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class OpResult:
    """What the check found for one op.

    ``method``: ``values`` (compared with recorded values), ``stats`` (with recorded statistics and
    fingerprint), ``layout`` (a view: its nodes run on storage addresses match the recorded shape,
    strides and offset), ``shape`` (uninitialized memory: shape and dtype), ``draws`` (a random
    op: its recorded draws are plausible), ``number`` (an op that handed a number to Python,
    ``tensor.item()``: the number recorded in its attribute ``returned`` against its replayed
    input).  ``runtime``: ``onnxruntime``, ``reference`` or ``record``.
    """

    op: int
    name: str
    module: str
    phase: str
    status: str
    method: str = ""
    runtime: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    tolerance: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class Change:
    """How one recorded tensor changed in a what-if replay."""

    op: int
    tensor: str
    module: str
    recorded: str
    replayed: str
    rel_change: float


@dataclass
class CheckReport:
    step: int
    rank: int
    phase: str
    mode: str
    results: list[OpResult]
    feeds: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    outputs: list[Change] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not any(r.status == FAILED for r in self.results)

    @property
    def failed(self) -> list[OpResult]:
        return [r for r in self.results if r.status == FAILED]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per phase (and ``all``): ops, checked, skipped, failed."""
        out: dict[str, dict[str, int]] = {}
        for r in self.results:
            for key in (r.phase, "all"):
                c = out.setdefault(key, {"ops": 0, CHECKED: 0, SKIPPED: 0, FAILED: 0})
                c["ops"] += 1
                c[r.status] += 1
        order = {p: i for i, p in enumerate((*PHASE_ORDER, "all"))}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], 99)))

    def fractions(self) -> dict[str, float]:
        """Fraction of ops checked (not skipped; failed ones count as checked) per phase."""
        return {
            p: (c[CHECKED] + c[FAILED]) / c["ops"] if c["ops"] else 0.0 for p, c in self.counts().items()
        }

    def skip_reasons(self) -> dict[str, int]:
        reasons: dict[str, int] = {}
        for r in self.results:
            if r.status == SKIPPED:
                key = f"{r.name}: {r.reason}"
                reasons[key] = reasons.get(key, 0) + 1
        return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict[str, Any]:
        """The report as JSON data; non-finite numbers as the strings ``"inf"``, ``"-inf"``,
        ``"nan"`` (:func:`tracefmt.jsonout.plain`), so ``json.dumps(..., allow_nan=False)`` takes it."""
        data = {
            "step": self.step,
            "rank": self.rank,
            "phase": self.phase,
            "mode": self.mode,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
            "summary": self.counts(),
            "fraction_checked": self.fractions(),
            "feeds": self.feeds,
            "ops": [asdict(r) for r in self.results],
            "what_if": {
                "outputs": [asdict(c) for c in self.outputs],
                "changes": [asdict(c) for c in self.changes],
            }
            if self.feeds
            else None,
        }
        out: dict[str, Any] = plain(data)
        return out


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2e}"


def render(report: CheckReport, console: Any, *, verbose: bool = False, limit: int = 30) -> None:
    """Print a check report with rich: failures (and with ``verbose`` every op), then the
    fraction of ops checked per phase."""
    from rich.table import Table

    shown: Iterable[OpResult] = report.results if verbose else report.failed
    rows = list(shown) if verbose or not report.feeds else []
    if rows:
        table = Table(title="ops" if verbose else "failed ops", show_lines=False)
        for col in (
            "op",
            "phase",
            "module",
            "name",
            "status",
            "method",
            "max abs",
            "max rel",
            "tol",
            "reason",
        ):
            table.add_column(col, overflow="fold")
        for r in rows[: None if verbose else limit]:
            style = {"failed": "red", "skipped": "yellow"}.get(r.status, "")
            table.add_row(
                str(r.op),
                r.phase,
                r.module,
                r.name.removeprefix("aten::"),
                f"[{style}]{r.status}[/]" if style else r.status,
                r.method,
                _fmt(r.max_abs),
                _fmt(r.max_rel),
                _fmt(r.tolerance),
                r.reason,
            )
        console.print(table)
        if not verbose and len(rows) > limit:
            console.print(f"... and {len(rows) - limit} more failed ops (--json lists all)")
    reasons = report.skip_reasons()
    if reasons:
        console.print("skipped:")
        for reason, n in list(reasons.items())[:12]:
            console.print(f"  {n:5d} x {reason}", highlight=False)
    if report.feeds:
        _render_what_if(report, console)
    console.print("fraction of ops checked:")
    for phase, c in report.counts().items():
        frac = (c[CHECKED] + c[FAILED]) / c["ops"] if c["ops"] else 0.0
        console.print(
            f"  {phase:10s} {c[CHECKED] + c[FAILED]:5d}/{c['ops']:<5d} = "
            f"{100 * frac:5.1f}%   (passed {c[CHECKED]}, failed {c[FAILED]}, "
            f"skipped {c[SKIPPED]})",
            highlight=False,
        )
    verdict = "[green]PASS[/]" if report.passed else f"[red]FAIL[/] ({len(report.failed)} ops)"
    console.print(
        f"step {report.step} rank {report.rank} {report.phase} ({report.mode}): "
        f"{verdict} in {report.seconds:.1f} s"
    )


def _render_what_if(report: CheckReport, console: Any) -> None:
    from rich.table import Table

    console.print(
        f"what-if: replayed with {', '.join(report.feeds)} replaced; "
        f"{len(report.failed)} ops differ from the record beyond rounding first-hand "
        "(the ops that read the replaced tensor), the rest follow"
    )
    if report.outputs:
        table = Table(title="step outputs")
        for col in ("op", "tensor", "recorded", "what-if", "rel change"):
            table.add_column(col)
        for c in report.outputs:
            table.add_row(str(c.op), c.tensor, c.recorded, c.replayed, f"{c.rel_change:.3g}")
        console.print(table)
    if report.changes:
        table = Table(title="most changed tensors")
        for col in ("op", "module", "tensor", "recorded", "what-if", "rel change"):
            table.add_column(col)
        for c in [c for c in report.changes if c.rel_change > 0][:15]:
            table.add_row(str(c.op), c.module, c.tensor, c.recorded, c.replayed, f"{c.rel_change:.3g}")
        console.print(table)


def relative_change(new: np.ndarray, old: np.ndarray) -> float:
    """What-if (``--feed``): the largest change relative to the recorded tensor's RMS
    (non-finite elements that stayed the same count as unchanged)."""
    same = (new == old) | (np.isnan(new) & np.isnan(old))
    finite = np.isfinite(old)
    scale = float(np.sqrt(np.mean(np.square(old[finite])))) if finite.any() else 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.abs(np.where(np.isfinite(new) & finite, new - old, np.inf)))
    return float(diff.max()) / (scale or 1.0) if diff.size else 0.0


def value_summary(x: np.ndarray) -> str:
    """A tensor in a few characters for the what-if table: its one number, or its mean."""
    if x.size == 1:
        return f"{float(x.reshape(-1)[0]):.6g}"
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is a NaN mean, and says so
        return f"mean {float(x.mean()):.6g}"
