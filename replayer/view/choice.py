"""Which viewer ``replayer view`` uses: Netron for small steps, Model Explorer for large ones.

Netron lays out a whole graph at once: measured here (FACTS.md, a headless browser, 2 cores) a
chain of 1,000 nodes took 2.1 s, forward+backward with saved tensors drawn as separate inputs
3.1 s at 2,000 nodes and 5.9 s at 5,000, and with long saved-activation edges a 2,000-node graph
crashed the tab.  Model Explorer lays out one layer at a time and opened a 2,000-op step in about
1 s, 10,000 in 2-3 s and 50,000 in 4-6 s with layers of a few hundred children.  So ``auto`` picks
Netron up to :data:`NETRON_MAX_OPS` ops in the step and Model Explorer above, when it is installed.
"""

from __future__ import annotations

from typing import NamedTuple

from replayer.errors import ReplayError
from replayer.view.webapp import missing

__all__ = ["NETRON_MAX_OPS", "VIEWERS", "ViewerChoice", "choose_viewer"]

#: The most ops in a step that ``auto`` shows in Netron.
NETRON_MAX_OPS = 2000
VIEWERS = ("auto", "netron", "explorer")


class ViewerChoice(NamedTuple):
    """The viewer to use (``netron`` or ``explorer``) and why, as a sentence for the user."""

    viewer: str
    reason: str


def choose_viewer(requested: str, ops: int) -> ViewerChoice:
    """The viewer for a step of ``ops`` ops (for ``view --diff``: side B's) when the user asked
    for ``requested``.

    ``explorer`` without Model Explorer installed raises :class:`ReplayError` naming the fix;
    ``auto`` then falls back to Netron and says so.
    """
    if requested not in VIEWERS:
        raise ReplayError(f"Unknown viewer {requested!r}; use one of {', '.join(VIEWERS)}.")
    absent = missing()
    if requested == "netron":
        return ViewerChoice("netron", "Netron, as asked (--viewer netron).")
    if requested == "explorer":
        if absent is not None:
            raise ReplayError(absent)
        return ViewerChoice("explorer", "Model Explorer, as asked (--viewer explorer).")
    if ops <= NETRON_MAX_OPS:
        return ViewerChoice(
            "netron",
            f"Netron: the step has {ops:,} ops, at most {NETRON_MAX_OPS:,} lay out in seconds "
            "there (--viewer explorer shows it layer by layer in Model Explorer).",
        )
    if absent is not None:
        return ViewerChoice(
            "netron",
            f"Netron: the step has {ops:,} ops, more than the {NETRON_MAX_OPS:,} Netron lays out "
            f"in seconds, but {absent[0].lower()}{absent[1:]}",
        )
    return ViewerChoice(
        "explorer",
        f"Model Explorer: the step has {ops:,} ops, more than the {NETRON_MAX_OPS:,} Netron lays "
        "out in seconds; Model Explorer shows it layer by layer (--viewer netron to override).",
    )
