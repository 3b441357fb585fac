"""The ``sambench`` command line (also ``python -m bench``).

Exit status: 0 success, 2 invalid input, 1 a failure at run time; 130 after Ctrl-C and
128 + N after signal N (SIGTERM: 143).
"""
from __future__ import annotations

import argparse
import sys

from bench.cli.claims_command import cmd_claims
from bench.cli.data_command import add_parser as add_data_parser
from bench.cli.perf_command import cmd_perf
from bench.cli.result_commands import cmd_collect, cmd_list, cmd_plot, cmd_report, cmd_sharpness, cmd_table
from bench.cli.suite_commands import WATCH_EVERY_S, cmd_run, cmd_status
from bench.cli.train_command import cmd_train
from bench.errors import EXIT_FAIL, EXIT_INVALID, Interrupted, InvalidInput, RunFailed, suggest

# --- the parser -----------------------------------------------------------------------------------

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


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching (``--epoch`` is not ``--epochs``); an unknown flag is reported
    by the subcommand it was given to (its usage, and the flag one edit away when there is one)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = self.commands.get(getattr(parsed, "command", None), self)
            flags = [s for a in owner._actions for s in a.option_strings]
            hints = [f"{x}: did you mean {' or '.join(close)}?" for x in extras if x.startswith("-")
                     for close in [suggest(x.split("=", 1)[0], flags)] if close]
            owner.error(f"unrecognized arguments: {' '.join(extras)}" + "".join(f"; {h}" for h in hints))
        return parsed

    def error(self, message: str):
        """argparse's error, with the choice one edit away for an invalid choice (``list mask``)."""
        import re

        from bench.errors import did_you_mean

        found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            message += did_you_mean(found.group(1), re.findall(r"'([^']*)'", found.group(2)))
        super().error(message)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sambench")
    except PackageNotFoundError:
        return "unknown (not installed; run make install)"


RESULTS_DIR = "a results folder (of suites, one suite, or one run)"
SELECT_HELP = ("which configuration (rho) stands for each method: val (best mean validation accuracy), "
               "val-early (best-epoch validation, test accuracy at that epoch), test (the ORACLE: chosen on "
               "test), last (each method's one configuration), fixed:rho=X or fixed:MASK:rho=X,... "
               "(default: val when the runs hold out a validation split, else test, labelled oracle)")


def _selection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--select", metavar="RULE", default=None, help=SELECT_HELP)
    p.add_argument("--tune", metavar="FIELDS", default=None,
                   help="comma-separated fields the rule chooses, e.g. rho,base.lr "
                        "(default: rho)")


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``train_flags=False`` leaves out train's run-config flags (they
    read the variant registry, which imports torch), for the other commands' start-up time."""
    ap = Parser(prog="sambench", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"sambench {_version()}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        ap.commands[name] = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        return ap.commands[name]

    _run_parser(command("run", "run a suite (local by default, or SLURM)"))

    _status_parser(command("status", "counts of done/failed/running/... runs, and why runs failed"))

    _result_parsers(command)

    p = command("sharpness", "m-sharpness and Hessian eigenvalue/trace of finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (holding checkpoint.pt)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="the first N training samples (default: 1024)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the run's device)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a sharpness option (m=64, steps=10, hessian=false, radii={linf_adaptive: [0.003]})")
    p.add_argument("--force", action="store_true", help="measure again even if result.json holds it")
    p.set_defaults(func=cmd_sharpness)

    _train_parser(command("train", "one run, in process"), train_flags)
    _perf_parser(command("perf", "step-time ratios to SGD, in one process"))

    add_data_parser(command("data", "fetch the public data sets, list what is present and where"),
                            HelpFormatter)

    p = command("list", "the registries")
    p.add_argument("what", choices=["masks", "variants", "models", "datasets"], help="which registry")
    p.set_defaults(func=cmd_list)
    return ap


def _result_parsers(command) -> None:
    """collect, plot, table, report and claims: results read back, each under a selection rule."""
    p = command("collect", "one CSV row per run")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("-o", "--output", metavar="CSV", help="the CSV file (default: DIR/results.csv)")
    _selection_flags(p)
    p.set_defaults(func=cmd_collect)

    p = command("plot", "accuracy vs sparsity, rho sweeps, runtime vs accuracy, gamma")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("-o", "--output", metavar="FIGDIR", help="folder for the PNG and PDF files (default: DIR/figures)")
    _selection_flags(p)
    p.set_defaults(func=cmd_plot)

    p = command("table", "a markdown (or LaTeX) table, mean ± std over seeds")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("--latex", action="store_true", help="LaTeX (booktabs) instead of markdown")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="instead: the seed-paired difference A - B with its 95%% CI (paired t); A, B: "
                        "METHOD[@RHO], e.g. norm_only@1.0 all@0.1 (no rho: the rho --select chose)")
    p.add_argument("--metric", default=None,
                   help="metric for --compare (default: what the rule reports, test_acc)")
    _selection_flags(p)
    p.set_defaults(func=cmd_table)

    p = command("report", "one self-contained HTML page: status, tables, figures, failed runs, environment")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("-o", "--output", metavar="HTML", help="the page (default: DIR/report.html)")
    _selection_flags(p)
    p.set_defaults(func=cmd_report)

    p = command("claims", "the SAM-ON paper's claims as seed-paired tests on these results, with verdicts")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate of Holm's correction")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write the tests to this CSV file")
    _selection_flags(p)
    p.set_defaults(func=cmd_claims)


def _run_parser(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--keep-running", action="store_true",
                   help="on Ctrl-C or SIGTERM, leave the local workers running (default: stop them; "
                        "their runs resume from the last finished epoch on the next run)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a run field for every run (epochs=1, base.lr=0.05, logging.wandb=true), "
                        "or slurm.KEY, name, seeds; repeatable")
    p.set_defaults(func=cmd_run)


def _status_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", help="a suite file, a suite's results folder, or a results folder of suites")
    p.add_argument("--out", default="results", help="results folder (for a suite file)")
    p.add_argument("--watch", nargs="?", const=str(WATCH_EVERY_S), metavar="SECONDS",
                   help=f"refresh every SECONDS (default: {WATCH_EVERY_S:g}) until no run is running; Ctrl-C stops")
    p.set_defaults(func=cmd_status)


def _train_parser(p: argparse.ArgumentParser, train_flags: bool) -> None:
    if train_flags:
        from bench.cli.flags import add_train_flags

        add_train_flags(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any run config field by its path, e.g. base.betas=[0.9,0.99] or "
                        "logging.wandb.mode=offline; repeatable (default: none)")
    p.add_argument("--out", help="the run folder (default: results/train/<run id>)")
    p.set_defaults(func=cmd_train)


def _perf_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet20", help="architecture (`sambench list models`)")
    p.add_argument("--dataset", default=None,
                   help="take the image shape from this dataset (default: cifar100 for steps, digits for --epoch, "
                        "fashion_mnist for --fisher)")
    p.add_argument("--batch-size", type=int, default=128, metavar="N", help="batch size")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-step", action="store_true",
                   help="time each SAM configuration also through the compiled step (bench.engine.fast_step), "
                        "labelled '<configuration> compiled'")
    p.add_argument("--steps", type=int, default=20, metavar="N", help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps first")
    p.add_argument("--configs", default="default",
                   help="comma list of variant:mask[:opts] or a preset (default, paper, variants)")
    p.add_argument("--fisher", action="store_true", help="time the batched vs per-sample Fisher mask")
    p.add_argument("--fisher-samples", type=int, default=1024, metavar="N", help="samples for --fisher")
    p.add_argument("--epoch", action="store_true", help="also time a full epoch against its steps")
    p.add_argument("--orchestration", metavar="N[,N...]",
                   help="instead: time the dry run, SLURM submission (when a controller answers), status and "
                        "collect of a generated suite of N runs (a multiple of 100), e.g. 1000,10000")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="time the step in N processes (DDP; default configs: SGD, SAM all / norm_only with "
                        "ascent synced and local) and report the bytes all-reduced per step")
    p.add_argument("--json", metavar="FILE", help="write the records to this file")
    p.set_defaults(func=cmd_perf)


def _unknown_name(exc: BaseException) -> bool:
    """A masks.registry.UnknownNameError (looked up only if that module was loaded: commands that
    read files only, like status and collect, never import torch through masks)."""
    registry = sys.modules.get("masks.registry")
    return registry is not None and isinstance(exc, registry.UnknownNameError)


def _pipe_closed() -> int:
    """Exit status 141 (128 + SIGPIPE, as a shell reports a writer whose pipe closed), without a
    traceback: what is still buffered for stdout goes to /dev/null instead of the closed pipe."""
    import os
    import signal

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    from bench.console import plain_warnings

    argv = sys.argv[1:] if argv is None else list(argv)
    # train's run-config flags only for `train` (the variant registry imports torch)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(train_flags=command == "train").parse_args(argv)
    args.argv = argv
    try:
        with plain_warnings():
            return args.func(args)
    except InvalidInput as exc:
        print(f"sambench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except RunFailed as exc:
        print(f"sambench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Interrupted as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`sambench ... | head`): stop quietly
        return _pipe_closed()
    except Exception as exc:
        if not _unknown_name(exc):
            raise
        print(f"sambench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
