"""``sambench claims DIR``: the SAM-ON paper's claims as seed-paired tests on a results folder, with
their verdicts (analysis.claims, analysis/paper_claims.py; the protocol: docs/protocol.md)."""
from __future__ import annotations

from bench.cli.paths import creatable_file, results_folder
from bench.errors import EXIT_OK, InvalidInput


def selection_args(args) -> tuple:
    """(rule, tuned fields) of the --select / --tune flags, checked (a bad rule: InvalidInput, exit 2)."""
    import analysis

    tune = tuple(f.strip() for f in args.tune.split(",") if f.strip()) if getattr(args, "tune", None) else None
    if args.select is not None:
        try:
            analysis.parse_rule(args.select)
        except analysis.SelectionError as exc:
            raise InvalidInput(str(exc)) from None
    return args.select, tune


def cmd_claims(args) -> int:
    import analysis

    folder = results_folder(args.dir)
    if not 0 < args.alpha < 1:
        raise InvalidInput(f"--alpha: must be in (0, 1), got {args.alpha}")
    out = creatable_file(args.csv, "--csv") if args.csv else None
    rule, tune = selection_args(args)
    try:
        frame = analysis.claims(folder, rule, tune, alpha=args.alpha)
    except analysis.SelectionError as exc:
        raise InvalidInput(str(exc)) from None
    print(analysis.claims_text(frame), end="")
    if out is not None:
        analysis.write_csv(frame, out)
        print(f"{len(frame)} tests -> {out}")
    return EXIT_OK
