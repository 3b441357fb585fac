"""The --select / --tune flags of the result commands (collect, table, plot, report, claims): read,
checked, and a rule that cannot be applied to the results made invalid input (exit 2)."""
from __future__ import annotations

from bench.errors import InvalidInput


def selected(make):
    """``make()``, a selection rule that cannot be applied being invalid input (exit 2)."""
    import analysis

    try:
        return make()
    except analysis.SelectionError as exc:
        raise InvalidInput(str(exc)) from None


def selection_args(args) -> tuple:
    """(rule, tuned fields) of the --select / --tune flags, checked (a bad rule: InvalidInput, exit 2)."""
    import analysis

    tune = tuple(f.strip() for f in args.tune.split(",") if f.strip()) if getattr(args, "tune", None) else None
    if args.select is not None:
        selected(lambda: analysis.parse_rule(args.select))
    return args.select, tune
