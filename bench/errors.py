"""Bad input and exit codes, shared by every layer; imports nothing from bench.

An :class:`InvalidInput` carries the field path, the allowed values and the source file as
data, so a caller can re-address it (a suite names the grid entry, ``sambench train`` the
flag) without reading the message text. The command line prints it without a traceback and
exits with :data:`EXIT_INVALID`.

User text (suite files, ``--set`` values) is parsed by :func:`load_yaml`: ``yaml.safe_load``
rules, duplicate keys rejected, and at most :data:`MAX_YAML_NODES` nodes after alias expansion,
so a few hundred bytes of aliases cannot expand into gigabytes. Values quoted in messages go
through :func:`show`, which never builds more than a short prefix of a value's repr.
"""
from __future__ import annotations

import contextlib
import reprlib
import signal
import threading
from typing import Any

import yaml

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2
MAX_YAML_NODES = 100_000      # nodes of a suite file or --set value after alias expansion
MESSAGE_LIMIT = 2_000         # characters of one error message
SHOW_LIMIT = 80               # characters of one value quoted in a message

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple = 3, 6, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = SHOW_LIMIT, SHOW_LIMIT, 40


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """A short repr of a user value for messages (nested and long values are cut with '...')."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --- names one edit away ---------------------------------------------------------------------

def _one_edit(a: str, b: str) -> bool:
    """Whether a and b differ by one insertion, deletion, substitution or swap of neighbours."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    i = next((i for i, (x, y) in enumerate(zip(short, long)) if x != y), len(short))
    return short[i:] == long[i + 1:]


def suggest(name: Any, allowed: Any, limit: int = 3) -> list[str]:
    """The allowed names one edit away from ``name`` (ignoring case), at most ``limit``: the one
    rule behind every "did you mean" (masks, variants, models, data sets, config and suite keys,
    options, flags)."""
    if not isinstance(name, str) or not name or isinstance(allowed, (str, bytes)) or allowed is None:
        return []
    low = name.lower()
    out = [a for a in allowed if isinstance(a, str) and a != name and (a.lower() == low or _one_edit(low, a.lower()))]
    return list(dict.fromkeys(out))[:limit]


def did_you_mean(name: Any, allowed: Any) -> str:
    """``" (did you mean 'random'?)"`` (or ``""``): appended to an unknown-name message."""
    close = suggest(name, allowed)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


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
        return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 3] + "..."

    def __str__(self) -> str:
        return self.render()


class RunFailed(Exception):
    """A command that could not do its work (exit 1, one line)."""


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP) that stops a command the way Ctrl-C does; exit 128 + signum."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGHUP stop the command like Ctrl-C does (raise Interrupted), so what it
    started is stopped or handed over before it exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- user YAML -----------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults": merged keys may be overridden, that is the point
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {show(key)} (first at line {seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _node_count(node: yaml.Node, budget: int) -> int:
    """Nodes of the document with every alias expanded, counting no further than ``budget``."""
    count, stack = 0, [node]
    while stack:
        n = stack.pop()
        count += 1
        if count > budget:
            break
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.append(k)
                stack.append(v)
    return count


def load_yaml(text: str, source: str) -> Any:
    """Parse user YAML (``source`` names it in errors): safe, unique keys, bounded size."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _node_count(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise InvalidInput(f"more than {MAX_YAML_NODES:,} values once its aliases (*name) are "
                               f"expanded; write the suite out or split it", source=source)
        return loader.construct_document(node)
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
