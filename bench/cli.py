"""The ``sambench`` command line (also ``python -m bench``).

Exit status: 0 success, 2 invalid input, 1 a failure at run time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

EXIT_OK, EXIT_FAIL, EXIT_INVALID = 0, 1, 2


class InvalidInput(Exception):
    """Bad input from the user: printed without a traceback, exit status 2."""


def parse_set(items: list[str] | None) -> dict:
    """``--set key=value``: the value is a YAML scalar (or flow list/map), never eval-ed."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidInput(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise InvalidInput(f"--set {key}: cannot parse {value!r} ({exc})") from None
    return out


# --- train ---------------------------------------------------------------------------------
# the flags are generated from the run config (bench.flags), so a new config field is a new flag


def cmd_train(args) -> int:
    from bench import config as C
    from bench import flags, loggers, train

    try:
        over = flags.train_overrides(args, parse_set)
    except loggers.LoggingError as exc:
        raise InvalidInput(str(exc)) from None
    try:
        cfg = C.resolve(over)
    except C.ConfigError as exc:
        raise InvalidInput(f"{flags.option_for(exc.field)} ({exc.render()})") from None
    if cfg["data_root"] is not None and not Path(cfg["data_root"]).is_dir():
        raise InvalidInput(f"--data-root: no such directory: {cfg['data_root']}")
    check_data(cfg)
    out = Path(args.out) if args.out else Path("results") / "train" / C.run_id(cfg)
    result = train.run(cfg, out, progress=True)
    print(f"{result['status']}: test accuracy {result['test_acc']:.2f}% after {result['epochs']} epochs, "
          f"{result['wall_time_s']:.1f} s, perturbed fraction {result['perturbed_fraction']:.6f} -> {out}"
          if result["test_acc"] is not None else f"{result['status']} -> {out}")
    return EXIT_OK if result["status"] == "done" else EXIT_FAIL


def check_data(cfg: dict) -> None:
    """Find the data before any work starts, so a missing data set is invalid input (exit 2)."""
    from bench import data as D

    try:
        D.load_dataset(cfg["dataset"], root=cfg["data_root"], download=cfg["download"])
    except D.DataError as exc:
        raise InvalidInput(f"--data-root / dataset {cfg['dataset']!r}: {exc}") from None


# --- list ----------------------------------------------------------------------------------

def cmd_list(args) -> int:
    from bench import registries

    registries.load()
    if args.what == "masks":
        import masks

        rows = masks.describe_masks()
        width = max(len(r[0]) for r in rows)
        for name, desc, opts in rows:
            print(f"{name:<{width}}  {desc}")
            if opts:
                print(f"{'':<{width}}    options: {opts}")
        return EXIT_OK
    if args.what == "variants":
        import inspect

        for name, cls in registries.VARIANTS.items():
            params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
            opts = ", ".join(f"{p.name}={p.default!r}" for p in params)
            print(f"{name:<6}  {(cls.__doc__ or '').strip()}" + (f"\n        options: {opts}" if opts else ""))
        return EXIT_OK
    if args.what == "models":
        from bench.models import describe_models

        rows = describe_models()
    else:
        from bench.data import describe_datasets

        rows = describe_datasets()
    width = max(len(r[0]) for r in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return EXIT_OK


# --- analysis ------------------------------------------------------------------------------

def cmd_collect(args) -> int:
    import analysis

    df = analysis.collect(args.dir)
    out = args.output or str(Path(args.dir) / "results.csv")
    analysis.write_csv(df, out)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    print(f"{len(df)} runs ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}) -> {out}")
    return EXIT_OK


def cmd_plot(args) -> int:
    import analysis

    outdir = args.output or str(Path(args.dir) / "figures")
    paths = analysis.plot_all(args.dir, outdir)
    for p in paths:
        print(p)
    print(f"{len(paths)} figure files in {outdir}")
    return EXIT_OK


def cmd_table(args) -> int:
    import analysis

    print(analysis.table(args.dir, fmt="latex" if args.latex else "markdown"), end="")
    return EXIT_OK


def cmd_report(args) -> int:
    import analysis
    from bench.console import warn

    out = args.output or str(Path(args.dir) / "report.html")
    info = analysis.write_report(args.dir, out)
    for text in info.warnings:  # collected while the page was made
        warn(text)
    print(f"{len(info.figures)} figures, {len(info.tables)} tables -> {info.path}")
    return EXIT_OK


def _existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such results folder: {text}")
    return text


# --- run / status / perf -------------------------------------------------------------------

def cmd_run(args) -> int:
    from bench import runner

    return runner.cmd_run(args)


def cmd_status(args) -> int:
    from bench import runner

    return runner.cmd_status(args)


def cmd_perf(args) -> int:
    from bench import perf

    return perf.cmd_perf(args)


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the help already says it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "default" in text.lower() or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sambench")
    except PackageNotFoundError:
        return "unknown (not installed; run make install)"


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``train_flags=False`` leaves out train's run-config flags (they
    import the registries, torch included), for the other commands' start-up time."""
    from bench import flags

    ap = argparse.ArgumentParser(prog="sambench", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"sambench {_version()}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    p = command("run", "run a suite (local by default, or SLURM)")
    p.add_argument("suite", help="a suite file (suites/*.yaml)")
    p.add_argument("--out", default="results", help="results folder; runs go to OUT/<suite name>/<run id>/")
    p.add_argument("--executor", choices=["local", "slurm", "debug", "auto"], default="local",
                   help="local processes, SLURM job arrays, in process (debug), or auto: "
                        "slurm when `scontrol ping` answers UP, else local")
    p.add_argument("--max-parallel", type=int, default=None, metavar="N",
                   help="local: worker processes; slurm: array tasks running at once "
                        "(default: local one per GPU, else one per core, at most 8; slurm: the suite's "
                        "array_parallelism)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state; write nothing")
    p.add_argument("--no-wait", action="store_true", help="submit and return; follow with `sambench status`")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a run field for every run (epochs=1, base.lr=0.05, logging.wandb=true), "
                        "or slurm.KEY, name, seeds; repeatable")
    p.set_defaults(func=cmd_run)

    p = command("status", "counts of done/running/pending/failed/diverged runs")
    p.add_argument("target", help="a suite file, a suite's results folder, or a results folder of suites")
    p.add_argument("--out", default="results", help="results folder (for a suite file)")
    p.set_defaults(func=cmd_status)

    p = command("collect", "one CSV row per run")
    p.add_argument("dir", type=_existing_dir, help="a results folder (of suites, one suite, or one run)")
    p.add_argument("-o", "--output", metavar="CSV", help="the CSV file (default: DIR/results.csv)")
    p.set_defaults(func=cmd_collect)

    p = command("plot", "accuracy vs sparsity, rho sweeps, runtime vs accuracy, gamma")
    p.add_argument("dir", type=_existing_dir, help="a results folder (of suites, one suite, or one run)")
    p.add_argument("-o", "--output", metavar="FIGDIR", help="folder for the PNG and PDF files (default: DIR/figures)")
    p.set_defaults(func=cmd_plot)

    p = command("table", "a markdown (or LaTeX) table, mean ± std over seeds")
    p.add_argument("dir", type=_existing_dir, help="a results folder (of suites, one suite, or one run)")
    p.add_argument("--latex", action="store_true", help="LaTeX (booktabs) instead of markdown")
    p.set_defaults(func=cmd_table)

    p = command("report", "one self-contained HTML page: status, tables, figures, failed runs, environment")
    p.add_argument("dir", type=_existing_dir, help="a results folder (of suites, one suite, or one run)")
    p.add_argument("-o", "--output", metavar="HTML", help="the page (default: DIR/report.html)")
    p.set_defaults(func=cmd_report)

    p = command("train", "one run, in process")
    if train_flags:
        flags.add_train_flags(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any run config field by its path, e.g. base.betas=[0.9,0.99] or "
                        "logging.wandb.mode=offline; repeatable (default: none)")
    p.add_argument("--out", help="the run folder (default: results/train/<run id>)")
    p.set_defaults(func=cmd_train)

    p = command("perf", "step-time ratios to SGD, in one process")
    p.add_argument("--model", default="resnet20", help="architecture (`sambench list models`)")
    p.add_argument("--dataset", default=None, help="take the image shape from this dataset (default: cifar-like 3x32x32)")
    p.add_argument("--batch-size", type=int, default=128, metavar="N", help="batch size")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--steps", type=int, default=20, metavar="N", help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps first")
    p.add_argument("--configs", default="default",
                   help="comma list of variant:mask[:opts] or a preset (default, paper)")
    p.add_argument("--fisher", action="store_true", help="time the batched vs per-sample Fisher mask")
    p.add_argument("--fisher-samples", type=int, default=1024, metavar="N", help="samples for --fisher")
    p.add_argument("--epoch", action="store_true", help="also time a full epoch against its steps")
    p.add_argument("--json", metavar="FILE", help="write the records to this file")
    p.set_defaults(func=cmd_perf)

    p = command("list", "the registries")
    p.add_argument("what", choices=["masks", "variants", "models", "datasets"], help="which registry")
    p.set_defaults(func=cmd_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    from bench.config import ConfigError
    from bench.console import plain_warnings
    from masks.registry import UnknownNameError

    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(train_flags=command == "train").parse_args(argv)
    try:
        with plain_warnings():
            return args.func(args)
    except (InvalidInput, ConfigError, UnknownNameError) as exc:
        print(f"sambench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
