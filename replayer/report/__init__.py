"""``replayer report``: one self-contained HTML page about a run.

:func:`build_report` (:mod:`replayer.report.compose`) gathers the sections from the run
(:mod:`replayer.report.gather`) and renders them into one page (:mod:`replayer.report.htmlpage`).
"""

from replayer.report.compose import ReportOptions, build_report, write_report

__all__ = ["ReportOptions", "build_report", "write_report"]
