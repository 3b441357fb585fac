"""``sambench run`` and ``sambench status``: a suite's runs submitted, waited for, and reported."""
from __future__ import annotations

from pathlib import Path

from bench.cli.paths import creatable_dir
from bench.errors import InvalidInput, parse_set, signals_interrupt


def cmd_run(args) -> int:
    from bench.orchestration import runner
    from bench.orchestration.suite import load_suite

    if args.max_parallel is not None and args.max_parallel < 1:
        raise InvalidInput(f"--max-parallel: must be >= 1, got {args.max_parallel}")
    out = creatable_dir(args.out, "--out")
    suite = load_suite(args.suite, parse_set(args.set), cache=True)
    with signals_interrupt():
        return runner.run_suite(suite, out, executor=args.executor, max_parallel=args.max_parallel,
                                dry_run=args.dry_run, wait=not args.no_wait, keep_running=args.keep_running)


def cmd_status(args) -> int:
    from bench.orchestration import runner

    return runner.print_status(Path(args.target), Path(args.out), cache=True)
