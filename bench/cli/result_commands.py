"""``sambench list | collect | plot | table | report | sharpness``: what is registered, and results read back."""
from __future__ import annotations

from bench.cli.paths import creatable_dir, creatable_file, results_folder
from bench.cli.selection_flags import selected, selection_args
from bench.errors import EXIT_FAIL, EXIT_OK, InvalidInput, parse_set


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")


def cmd_list(args) -> int:
    if args.what == "masks":
        import masks

        rows = masks.describe_masks()
        width = max(len(r[0]) for r in rows)
        for name, desc, opts in rows:
            print(f"{name:<{width}}  {desc}")
            if opts:
                print(f"{'':<{width}}    options: {opts}")
    elif args.what == "variants":
        from bench.engine.variants import describe_variants

        rows = describe_variants()
        width = max(len(r[0]) for r in rows)
        for name, desc, opts in rows:
            print(f"{name:<{width}}  {desc}" + (f"\n{'':<{width}}    options: {opts}" if opts else ""))
    elif args.what == "models":
        from bench.models import describe_models

        _print_rows(describe_models())
    else:
        from bench.data.datasets import describe_datasets

        _print_rows(describe_datasets())
    return EXIT_OK


def cmd_collect(args) -> int:
    import analysis

    folder = results_folder(args.dir)
    out = creatable_file(args.output, "-o") if args.output else folder / "results.csv"
    rule, tune = selection_args(args)
    df = analysis.collect(folder)
    if len(df):
        df = selected(lambda: analysis.mark_selection(df, rule, tune))
    analysis.write_csv(df, out)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    tag = f"; column selected: the configuration chosen by {df['selected_by'].iloc[0]}" if len(df) else ""
    print(f"{len(df)} runs ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}{tag}) -> {out}")
    return EXIT_OK


def cmd_plot(args) -> int:
    import analysis

    folder = results_folder(args.dir)
    outdir = creatable_dir(args.output, "-o") if args.output else folder / "figures"
    rule, tune = selection_args(args)
    paths = selected(lambda: analysis.plot_all(folder, outdir, select=rule, tune=tune))
    for p in paths:
        print(p)
    print(f"{len(paths)} figure files in {outdir}")
    return EXIT_OK


def cmd_table(args) -> int:
    import analysis

    folder = results_folder(args.dir)
    rule, tune = selection_args(args)
    if args.compare:
        try:
            print(selected(lambda: analysis.compare(folder, *args.compare, metric=args.metric, select=rule,
                                                     tune=tune)))
        except analysis.CompareError as exc:
            raise InvalidInput(f"--compare: {exc}") from None
        return EXIT_OK
    print(selected(lambda: analysis.table(folder, fmt="latex" if args.latex else "markdown", select=rule,
                                           tune=tune)), end="")
    return EXIT_OK


def cmd_report(args) -> int:
    import analysis
    from bench.console import warn

    folder = results_folder(args.dir)
    out = creatable_file(args.output, "-o") if args.output else folder / "report.html"
    rule, tune = selection_args(args)
    info = selected(lambda: analysis.write_report(folder, out, select=rule, tune=tune))
    for text in info.warnings:  # collected while the page was made
        warn(text)
    print(f"{len(info.figures)} figures, {len(info.tables)} tables, selected by {info.rule} -> {info.path}")
    return EXIT_OK


def cmd_sharpness(args) -> int:
    """Measure sharpness of finished runs (bench.measure.sharpness); every folder is checked first."""
    from bench.data import datasets as data
    from bench.engine import sharpness_runs
    from bench.measure import sharpness

    overrides = parse_set(args.set)
    if args.samples is not None:
        overrides["n_samples"] = args.samples
    if args.device is not None and not (args.device in ("auto", "cpu", "cuda") or args.device.startswith("cuda:")):
        raise InvalidInput(f"--device: got {args.device!r} (allowed: auto, cpu, cuda, cuda:N)")
    try:
        outcomes = sharpness_runs.evaluate_dirs(args.run_dirs, overrides, args.device, args.force)
    except sharpness.SettingsError as exc:
        flag = "--samples" if exc.field == ".n_samples" else f"--set {exc.field.lstrip('.')}"
        raise InvalidInput(f"{flag}: {exc.message}" + (f" (allowed: {', '.join(map(str, exc.allowed))})"
                                                        if exc.allowed else "")) from None
    except (sharpness_runs.RunDirError, data.DataError) as exc:
        raise InvalidInput(str(exc).splitlines()[0]) from None
    locked = [d for d, outcome in outcomes if outcome == "locked"]
    return EXIT_FAIL if locked else EXIT_OK
