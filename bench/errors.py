"""Bad input and exit codes, shared by every layer; imports nothing from bench.

An :class:`InvalidInput` carries the field path, the allowed values and the source file as
data, so a caller can re-address it (a suite names the grid entry, ``sambench train`` the
flag) without reading the message text. The command line prints it without a traceback and
exits with :data:`EXIT_INVALID`.

User text (suite files, ``--set`` values) is parsed by :func:`load_yaml` (``yaml.safe_load``
rules).
"""
from __future__ import annotations

from typing import Any

import yaml

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2


def show(value: Any) -> str:
    """A user value quoted in a message."""
    return repr(value)


class InvalidInput(ValueError):
    """Bad input from the user: printed without a traceback, exit status 2.

    ``field`` is the dotted path of the bad value (``base.lr``, ``grid[2].mask``), ``allowed``
    what would be accepted, ``source`` the file (or ``--set``) it came from.
    """

    def __init__(self, message: str, *, field: str | None = None, allowed: Any = None,
                 source: str | None = None):
        self.message, self.field, self.allowed, self.source = message, field, allowed, source
        super().__init__(message)

    def render(self) -> str:
        text = self.message if self.field is None else f"{self.field}: {self.message}"
        if self.source:
            text = f"{self.source}: {text}" if self.source != "--set" else f"--set {text}"
        if self.allowed is not None:
            allowed = self.allowed
            if isinstance(allowed, (list, tuple)):
                allowed = ", ".join(map(str, allowed))
            text += f" (allowed: {allowed})"
        return text

    def __str__(self) -> str:
        return self.render()


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP) that stops a command the way Ctrl-C does; exit 128 + signum."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)


# --- user YAML -----------------------------------------------------------------------------

def load_yaml(text: str, source: str) -> Any:
    """Parse user YAML (``source`` names it in errors)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise InvalidInput(f"{where}YAML syntax error: {detail}", source=source) from None
    finally:
        loader.dispose()


def parse_set(items: list[str] | None) -> dict:
    """``--set key=value``: the value is a YAML scalar (or flow list/map), never eval-ed."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidInput(f"{show(item)}: expected key=value", source="--set")
        key, value = item.split("=", 1)
        key = key.strip()
        out[key] = load_yaml(value, f"--set {key}") if value.strip() else None
    return out
