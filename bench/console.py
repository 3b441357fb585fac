"""Warnings for people: one ``warning: ...`` line on stderr per distinct message.

The command line routes Python's ``warnings`` (e.g. ``analysis.collect`` skipping a corrupt
file) and the ``analysis`` logger's warnings through :func:`warn`, so a user sees each message
once, without the warning machinery's category and source line::

    with console.plain_warnings():
        ...                       # warnings.warn(...) / logging.getLogger("analysis").warning(...)
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Iterator, TextIO

_seen: set[str] = set()
LOGGERS = ("analysis", "bench", "masks")


def warn(message: str, stream: TextIO | None = None) -> None:
    """Print ``warning: <message>`` once per process (later repeats are dropped)."""
    text = str(message).strip()
    if not text or text in _seen:
        return
    _seen.add(text)
    print(f"warning: {text}", file=stream or sys.stderr, flush=True)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """Inside: Python warnings and the project loggers' warnings print as ``warning: ...`` lines."""
    handler = _Handler(level=logging.WARNING)
    saved = []
    for name in LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.propagate))
        log.addHandler(handler)
        log.propagate = False  # not a second time through the root logger's last-resort handler
    try:
        with warnings.catch_warnings():  # restores showwarning on the way out
            warnings.showwarning = lambda message, *args, **kwargs: warn(str(message))
            yield
    finally:
        for log, propagate in saved:
            log.removeHandler(handler)
            log.propagate = propagate
