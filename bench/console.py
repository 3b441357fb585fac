"""Console output for people: one ``warning: ...`` line per distinct message, and a live progress line.

The command line routes Python's ``warnings`` (e.g. ``analysis.collect`` skipping a corrupt
file) and the ``analysis`` logger's warnings through :func:`warn`, so a user sees each message
once, without the warning machinery's category and source line::

    with console.plain_warnings():
        ...                       # warnings.warn(...) / logging.getLogger("analysis").warning(...)

:class:`LiveLine` is the one progress line long commands redraw on a terminal (and never write
into pipes or logs).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
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


# --- a live status line ------------------------------------------------------------------------

def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal that can redraw a line (not a pipe, a file or TERM=dumb)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
    except ValueError:  # a closed stream
        return False


def duration(seconds: float | None) -> str:
    """``42s``, ``3:07``, ``1:02:03`` (h:mm:ss); ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LiveLine:
    """One status line redrawn in place on a terminal (carriage return, erase to the end of the
    line), at most every ``interval`` seconds; on anything else it writes nothing, so logs and
    pipes keep only the lines a command prints for good (:meth:`print` puts one above the line)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and is_terminal(self.stream)
        self.interval = interval
        self._shown_at: float | None = None
        self._text = ""

    def due(self) -> bool:
        """Whether :meth:`show` would redraw now (the first time always)."""
        return self.enabled and (self._shown_at is None or time.monotonic() - self._shown_at >= self.interval)

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled or not (force or self.due()):
            return
        text = text[:max(20, self._columns() - 1)]  # a wrapped line could not be redrawn in place
        self._shown_at = time.monotonic()
        if text == self._text and not force:
            return  # unchanged: nothing to redraw
        self._text = text
        self.stream.write("\r" + self._text + "\x1b[K")
        self.stream.flush()

    def _columns(self) -> int:
        """The terminal's width ($COLUMNS, else what the terminal says, else 100)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        env = os.environ.get("COLUMNS", "")
        return (int(env) if env.isdigit() else 0) or columns or shutil.get_terminal_size((100, 24)).columns

    def clear(self) -> None:
        """Erase the line (before other output, and at the end); the next :meth:`show` draws it again."""
        if self.enabled and self._text:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._text = ""
            self._shown_at = None

    def print(self, line: str, then: str | None = None) -> None:
        """Print ``line`` for good (on every stream) above the live line, which is then drawn again
        (as ``then``, if given)."""
        text = self._text if then is None else then
        self.clear()
        print(line, file=self.stream, flush=True)
        if text:
            self.show(text, force=True)
