"""How gnn-ooc's log records reach a person: the library logs through the ``gnn_ooc.*`` loggers
and shows nothing by itself; the command line (or a script that wants the same lines) calls
``setup_logging`` once.

Example:
    >>> "debug" in LOG_LEVELS
    True
    >>> setup_logging("warning")   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
import time

LOG_LEVELS = ("debug", "info", "warning", "error")


class StderrLines(logging.Handler):
    """gnn-ooc's log records as ``[HH:MM:SS] message`` lines on whatever ``sys.stderr`` is when
    they are emitted (``warning: ...`` and ``error: ...`` above info)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            print(f"[{stamp}] {level}{record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's own convention: a failed emit is reported, not raised
            self.handleError(record)


def setup_logging(level: str = "info") -> None:
    """Send the ``gnn_ooc`` loggers' records at ``level`` and above to stderr (once per process)."""
    root = logging.getLogger("gnn_ooc")
    if not any(isinstance(h, StderrLines) for h in root.handlers):
        root.addHandler(StderrLines())
    root.setLevel(level.upper())
    root.propagate = False  # an application's own root handlers would print every line twice
