"""docs/config.md's tables, generated from the field table and the optimizer table.

    python -m bench.config.docs            # rewrite the generated parts of docs/config.md

The page keeps its prose; each generated part sits between ``<!-- begin NAME -->`` and
``<!-- end NAME -->`` (tests/test_config.py checks the page is current).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from bench.config import optimizers
from bench.config.fields import FIELDS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v)


def _cell(text: str) -> str:
    """Table-cell text: ``|`` escaped, and ``<``/``>`` outside backticks (they would read as HTML)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def field_table() -> str:
    """One row per run-config field: default, allowed values, whether it is in the run id, help."""
    rows = ["| field | default | allowed | run id | what it is |", "|---|---|---|---|---|"]
    for f in FIELDS.values():
        allowed = getattr(f.checker(), "allowed", "")
        in_id = ("when not the default" if f.id_omits_default else "yes") if f.experiment else "no"
        rows.append(f"| `{f.name}` | `{_cell(_value(f.default))}` | {_cell(allowed)} | {in_id} | {_cell(f.help)} |")
    return "\n".join(rows)


def optimizer_table() -> str:
    """One row per base optimizer: its options and the defaults a run starts from."""
    effective = optimizers.effective_defaults()
    rows = ["| `base.name` | options | a run starts from | the class's own defaults for the rest |",
            "|---|---|---|---|"]
    for name in sorted(optimizers.OPTIONS):
        table = optimizers.DEFAULTS[name]
        rest = {k: v for k, v in effective[name].items() if k not in table}
        shown = ", ".join(f"{k}: {_value(v)}" for k, v in table.items()) or "(nothing: the class's defaults)"
        rows.append(f"| `{name}` | {', '.join(optimizers.OPTIONS[name])} | {shown} | "
                    f"{', '.join(f'{k}: {_value(v)}' for k, v in rest.items()) or '-'} |")
    return "\n".join(rows)


PARTS = {"fields": field_table, "optimizers": optimizer_table}


def render(page: str) -> str:
    """The page with every generated part written anew."""
    for name, make in PARTS.items():
        pattern = re.compile(rf"(<!-- begin {name} -->\n).*?(\n<!-- end {name} -->)", re.S)
        if not pattern.search(page):
            raise ValueError(f"{PAGE}: no '<!-- begin {name} -->' ... '<!-- end {name} -->' part")
        page = pattern.sub(lambda m, make=make: m.group(1) + make() + m.group(2), page)
    return page


def main() -> int:
    text = PAGE.read_text()
    new = render(text)
    if new != text:
        PAGE.write_text(new)
        print(f"updated {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
