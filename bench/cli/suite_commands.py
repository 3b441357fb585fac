"""``sambench run`` and ``sambench status``: a suite's runs submitted, waited for, and reported."""
from __future__ import annotations

from pathlib import Path

from bench.cli.paths import creatable_dir
from bench.errors import InvalidInput, parse_set, signals_interrupt

WATCH_EVERY_S = 2.0   # `sambench status --watch` without SECONDS


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
    """``sambench status TARGET [--watch [SECONDS]]`` (``--watch TARGET`` works too)."""
    from bench.orchestration import runner

    target, every = args.target, None
    if args.watch is not None:
        try:
            every = float(args.watch)
        except ValueError:
            if target is not None:
                raise InvalidInput(f"--watch: SECONDS must be a number, got {args.watch!r}") from None
            target, every = args.watch, WATCH_EVERY_S
        if not every > 0:
            raise InvalidInput(f"--watch: SECONDS must be > 0, got {args.watch}")
    if target is None:
        raise InvalidInput("give a suite file, a suite's results folder, or a results folder of suites")
    if every is None:
        return runner.print_status(Path(target), Path(args.out), cache=True)
    return runner.watch_status(Path(target), Path(args.out), every, cache=True)
