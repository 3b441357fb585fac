"""``sambench claims DIR``: the SAM-ON paper's claims as seed-paired tests on a results folder, with
their verdicts (analysis.claims, analysis/paper_claims.py; the protocol: docs/protocol.md)."""
from __future__ import annotations

from bench.cli.paths import creatable_file, results_folder
from bench.cli.selection_flags import selected, selection_args
from bench.errors import EXIT_OK, InvalidInput


def cmd_claims(args) -> int:
    import analysis

    folder = results_folder(args.dir)
    if not 0 < args.alpha < 1:
        raise InvalidInput(f"--alpha: must be in (0, 1), got {args.alpha}")
    out = creatable_file(args.csv, "--csv") if args.csv else None
    rule, tune = selection_args(args)
    frame = selected(lambda: analysis.claims(folder, rule, tune, alpha=args.alpha))
    print(analysis.claims_text(frame), end="")
    if out is not None:
        analysis.write_csv(frame, out)
        print(f"{len(frame)} tests -> {out}")
    return EXIT_OK
