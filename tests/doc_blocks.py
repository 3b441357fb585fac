"""The code blocks of README.md and docs/**.md, and how each one is checked.

A block's info string says what it is (tests/test_docs.py runs or checks every block):

- ``bash``, ``python``: executed, in order, in one temporary folder per page (``suites/`` there is
  the repository's, ``sambench`` and ``python`` are this checkout's), unless the line before it is
  ``<!-- no-run: WHY -->`` (a GPU, a cluster, the network, hours) or
  ``<!-- tested-by: tests/test_x.py -->`` (a test that reads the block from this page and runs it);
- ``yaml``: a suite, or a part of one (top-level blocks such as ``logging:`` or ``reference:``,
  other keys as run fields under ``defaults:``), loaded and validated by ``load_suite``;
- ``text``, ``console``: output, transcripts, diagrams, synopses; shown, not run;
- anything else, or no info string: an error, so that no runnable block goes unchecked by mistake.

A block whose first line is ``# NAME.EXT`` is a file: it is written to NAME.EXT in the page's folder
(a later ``bash`` block may use it); a python file is compiled, not run. A block identical to one
of README.md runs there only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = ("bash", "python")
CHECK = ("yaml",)
SHOW = ("text", "console")
KINDS = RUN + CHECK + SHOW

FENCE = re.compile(r"^(\s{0,3})(`{3,})(.*)$")
MARK = re.compile(r"^<!--\s*(no-run|tested-by):\s*(.*?)\s*-->$")
FILE_HEADER = re.compile(r"^#\s+([\w./-]+\.(?:yaml|yml|py|txt|json))\s*$")


@dataclass
class Block:
    page: Path        # relative to the repository
    line: int         # of the opening fence, 1-based
    info: str         # the info string's first word ('' if none)
    text: str
    mark: str = ""    # "no-run" | "tested-by" | ""
    reason: str = ""  # what follows the mark

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def file(self) -> str | None:
        """The file this block is (its first line ``# NAME.EXT``), or None."""
        first = self.text.split("\n", 1)[0]
        m = FILE_HEADER.match(first)
        return m.group(1) if m else None


def pages() -> list[Path]:
    """README.md, then every Markdown page under docs/, relative to the repository."""
    return [Path("README.md")] + sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*.md"))


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, with the mark on the line before each."""
    out: list[Block] = []
    lines = (ROOT / page).read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        prev = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.match(prev)
        out.append(Block(page, i + 1, info.split()[0] if info else "", "\n".join(body) + "\n",
                         mark.group(1) if mark else "", mark.group(2) if mark else ""))
        i = j + 1
    return out


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks(p)]


def readme_texts() -> set[str]:
    return {b.text for b in blocks(Path("README.md"))}
