"""The ``sambench`` command line (also ``python -m bench``).

Exit status: 0 success, 2 invalid input, 1 a failure at run time; 130 after Ctrl-C and
128 + N after signal N (SIGTERM: 143).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from bench.errors import EXIT_FAIL, EXIT_INVALID, EXIT_OK, Interrupted, InvalidInput, parse_set

# --- paths given on the command line --------------------------------------------------------------

def existing_dir(path: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InvalidInput(f"{path}: no such {what}")
    if not p.is_dir():
        raise InvalidInput(f"{path}: not a folder (expected a {what})")
    return p


def creatable_dir(path: str, flag: str) -> Path:
    """A folder that exists or can be made (no file in its way)."""
    p = Path(path)
    for q in [p, *p.parents]:
        if q.exists():
            if not q.is_dir():
                raise InvalidInput(f"{flag} {path}: {q} is a file, not a folder")
            break
    return p


def creatable_file(path: str, flag: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise InvalidInput(f"{flag} {path}: is a folder, expected a file name")
    creatable_dir(str(p.parent), flag)
    return p


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGHUP stop the command like Ctrl-C does (raise Interrupted), so what it
    started is stopped or handed over before it exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- train ----------------------------------------------------------------------------------------

# the flags are generated from the run config and the variant registry (bench.cli.flags)


def cmd_train(args) -> int:
    """One run: in this process; in N processes it starts (``--nproc N``); or as one rank of a group
    started by torchrun (RANK/WORLD_SIZE set: every rank runs this command, rank 0 reports)."""
    from bench import config
    from bench.cli import flags
    from bench.data.datasets import DataError, check_available
    from bench.engine import distributed, train

    over = flags.train_overrides(args)
    launched = distributed.launched()
    if launched:
        over.update(_world_of_launcher(over, args))
    try:
        cfg = config.resolve(over)
    except config.ConfigError as exc:
        raise InvalidInput(f"{flags.option_for(exc.field)} ({exc.render()})") from None
    if cfg["data_root"] is not None and not Path(cfg["data_root"]).is_dir():
        raise InvalidInput(f"--data-root: no such directory: {cfg['data_root']}")
    try:
        check_available(cfg["dataset"], cfg["data_root"], cfg["download"])
    except DataError as exc:
        raise InvalidInput(f"--data-root / dataset {cfg['dataset']!r}: {exc}") from None
    out = creatable_dir(args.out, "--out") if args.out else Path("results") / "train" / config.run_id(cfg)
    with signals_interrupt():
        if launched:
            main = distributed.init_from_env(cfg["device"]).is_main
            try:
                result = train.run(cfg, out, progress=main)
            finally:
                distributed.destroy()
            if not main:  # rank 0 reports
                return EXIT_OK if result["status"] == "done" else EXIT_FAIL
        elif config.world_size(cfg) > 1:
            result = _train_processes(cfg, out)
        else:
            result = train.run(cfg, out, progress=True)
    print(f"{result['status']}: test accuracy {result['test_acc']:.2f}% after {result['epochs']} epochs, "
          f"{result['wall_time_s']:.1f} s, perturbed fraction {result['perturbed_fraction']:.6f} -> {out}"
          if result.get("test_acc") is not None else
          f"{result['status']}{': ' + result['error'] if result.get('error') else ''} -> {out}")
    return EXIT_OK if result["status"] == "done" else EXIT_FAIL


def _world_of_launcher(over: dict, args) -> dict:
    """Under torchrun: nproc and nodes are what it started (a different --nproc/--nodes is an error)."""
    from bench.engine import distributed

    nproc, nodes = distributed.env_world()
    for key, have in (("nproc", nproc), ("nodes", nodes)):
        if key in over and over[key] != have:
            raise InvalidInput(f"--{key} {over[key]}: this process is one of {nproc * nodes} started by a launcher "
                               f"(WORLD_SIZE={nproc * nodes}, LOCAL_WORLD_SIZE={nproc}); leave --{key} out")
    return {"nproc": nproc, "nodes": nodes}


def _train_processes(cfg: dict, out: Path) -> dict:
    """``--nproc N``: N processes of this run on this machine (bench.orchestration.launch)."""
    from bench import config, rundir
    from bench.engine import train
    from bench.orchestration import launch

    if cfg["nodes"] > 1:
        raise InvalidInput(f"--nodes {cfg['nodes']}: `sambench train --nproc` starts processes on this machine only; "
                           "start each node with torchrun, or run a suite with --executor slurm")
    rid = config.run_id(cfg)
    rundir.check_owner(out, rid)
    out.mkdir(parents=True, exist_ok=True)
    train.write_config(out, rid, None, cfg)
    try:
        return launch.train_run(out, cfg["nproc"])
    except rundir.RunLocked as exc:
        raise InvalidInput(str(exc)) from None


# --- list -----------------------------------------------------------------------------------------

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


# --- analysis -------------------------------------------------------------------------------------

def cmd_collect(args) -> int:
    import analysis

    folder = existing_dir(args.dir, "results folder")
    out = creatable_file(args.output, "-o") if args.output else folder / "results.csv"
    df = analysis.collect(folder)
    analysis.write_csv(df, out)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    print(f"{len(df)} runs ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}) -> {out}")
    return EXIT_OK


def cmd_plot(args) -> int:
    import analysis

    folder = existing_dir(args.dir, "results folder")
    outdir = creatable_dir(args.output, "-o") if args.output else folder / "figures"
    paths = analysis.plot_all(folder, outdir)
    for p in paths:
        print(p)
    print(f"{len(paths)} figure files in {outdir}")
    return EXIT_OK


def cmd_table(args) -> int:
    import analysis

    folder = existing_dir(args.dir, "results folder")
    if args.compare:
        try:
            print(analysis.compare(folder, *args.compare, metric=args.metric))
        except analysis.CompareError as exc:
            raise InvalidInput(f"--compare: {exc}") from None
        return EXIT_OK
    print(analysis.table(folder, fmt="latex" if args.latex else "markdown"), end="")
    return EXIT_OK


def cmd_report(args) -> int:
    import analysis
    from bench.console import warn

    folder = existing_dir(args.dir, "results folder")
    out = creatable_file(args.output, "-o") if args.output else folder / "report.html"
    info = analysis.write_report(folder, out)
    for text in info.warnings:  # collected while the page was made
        warn(text)
    print(f"{len(info.figures)} figures, {len(info.tables)} tables -> {info.path}")
    return EXIT_OK


# --- sharpness -----------------------------------------------------------------------------

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


# --- run / status ---------------------------------------------------------------------------------

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


# --- perf -----------------------------------------------------------------------------------------

def cmd_perf(args) -> int:
    if args.orchestration is not None:
        return _perf_orchestration(args)
    from bench import config
    from bench.perf import timing as perf

    for flag, value, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                             ("--batch-size", args.batch_size, 1), ("--fisher-samples", args.fisher_samples, 1)):
        if value < low:
            raise InvalidInput(f"{flag}: must be >= {low}, got {value}")
    config.check_device(args.device, "--device")
    json_path = creatable_file(args.json, "--json") if args.json else None
    if args.nproc < 1:
        raise InvalidInput(f"--nproc: must be >= 1, got {args.nproc}")
    if args.nproc > 1:
        return _perf_processes(args, perf, json_path)
    if args.fisher:
        rec = perf.time_fisher(args.model, args.dataset or "fashion_mnist", args.device, args.fisher_samples)
        print(f"fisher mask, {rec['num_samples']} samples, {args.model} on {args.device}: batched "
              f"{rec['batched_s']:.2f} s, sample-by-sample loop {rec['loop_s']:.2f} s, "
              f"{rec['ratio']:.1f}x faster batched; {rec['batched_vs_floor']:.2f}x its floor "
              f"(one batched forward+backward, {rec['floor_s']:.2f} s)")
        records = [rec]
    else:
        records = _perf_steps(args, perf)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=2))
    return EXIT_OK


def _perf_steps(args, perf) -> list[dict]:
    configs = perf.parse_configs(args.configs)
    if args.compile_step:
        configs = perf.with_compiled(configs)
    dataset = args.dataset or "digits"
    if args.epoch:
        from bench.data.datasets import DataError, check_available

        try:
            check_available(dataset)
        except DataError as exc:
            raise InvalidInput(f"--epoch needs the data set: {exc}") from None
    recs = perf.time_steps(args.model, args.batch_size, args.device, args.amp, configs, steps=args.steps,
                           warmup=args.warmup, dataset=args.dataset, channels_last=args.channels_last,
                           compile=args.compile)
    if len(recs) < min(2, len(configs)):
        raise RunFailed("perf: no configuration could be timed on this model (see the messages above)")
    perf.print_table(recs)
    if args.epoch:
        ep = perf.time_epoch(args.model, dataset, args.batch_size, args.device, args.amp)
        print(f"epoch of {ep['dataset']} ({ep['steps']} SAM-ON steps): {ep['epoch_s']:.3f} s, "
              f"sum of step times {ep['sum_step_s']:.3f} s, ratio {ep['ratio']:.3f}")
        recs.append({"benchmark": "epoch", **ep})
    return recs


def _perf_orchestration(args) -> int:
    """``--orchestration N[,N...]``: dry run, SLURM submission, status and collect of generated suites."""
    from bench.perf import scale as perf_scale

    try:
        sizes = [int(n) for n in args.orchestration.split(",")]
        for n in sizes:
            perf_scale.check_size(n)
    except ValueError as exc:
        raise InvalidInput(f"--orchestration: {exc}" if "multiple" in str(exc) else
                           f"--orchestration: expected run counts like 1000,10000, got {args.orchestration!r}") from None
    json_path = creatable_file(args.json, "--json") if args.json else None
    records = [rec for n in sizes for rec in perf_scale.benchmark(n)]
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=2))
    return EXIT_OK


def _perf_processes(args, perf, json_path: Path | None) -> int:
    """``--nproc N``: this command again in N processes of one group (bench.orchestration.launch); rank 0 reports."""
    from bench.engine import distributed
    from bench.orchestration import launch

    if args.fisher or args.epoch:
        raise InvalidInput("--nproc times training steps only (not --fisher or --epoch)")
    if not distributed.launched():
        failure = launch.start_and_watch([sys.executable, "-m", "bench", *args.argv], args.nproc)
        if failure is not None:
            raise RunFailed(f"perf --nproc {args.nproc}: {failure.describe()}")
        return EXIT_OK
    comm = distributed.init_from_env(args.device)
    try:
        configs = perf.parse_configs("ddp" if args.configs == "default" else args.configs)
        records = perf.time_steps_ddp(args.model, args.batch_size, args.device, args.amp, configs, comm,
                                      steps=args.steps, warmup=args.warmup, dataset=args.dataset)
    finally:
        distributed.destroy()
    if comm.is_main:
        perf.print_ddp_table(records)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(records, indent=2))
    return EXIT_OK


class RunFailed(Exception):
    """A command that could not do its work (exit 1, one line)."""


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sambench")
    except PackageNotFoundError:
        return "unknown (not installed; run make install)"


RESULTS_DIR = "a results folder (of suites, one suite, or one run)"


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``train_flags=False`` leaves out train's run-config flags (they
    read the variant registry, which imports torch), for the other commands' start-up time."""
    ap = argparse.ArgumentParser(prog="sambench", description=__doc__.splitlines()[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"sambench {_version()}",
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    _run_parser(command("run", "run a suite (local by default, or SLURM)"))

    p = command("status", "counts of done/failed/running/... runs, and why runs failed")
    p.add_argument("target", help="a suite file, a suite's results folder, or a results folder of suites")
    p.add_argument("--out", default="results", help="results folder (for a suite file)")
    p.set_defaults(func=cmd_status)

    p = command("collect", "one CSV row per run")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("-o", "--output", metavar="CSV", help="the CSV file (default: DIR/results.csv)")
    p.set_defaults(func=cmd_collect)

    p = command("plot", "accuracy vs sparsity, rho sweeps, runtime vs accuracy, gamma")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("-o", "--output", metavar="FIGDIR", help="folder for the PNG and PDF files (default: DIR/figures)")
    p.set_defaults(func=cmd_plot)

    p = command("table", "a markdown (or LaTeX) table, mean ± std over seeds")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("--latex", action="store_true", help="LaTeX (booktabs) instead of markdown")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="instead: the seed-paired difference A - B with its 95%% CI (paired t); A, B: "
                        "METHOD[@RHO], e.g. norm_only@1.0 all@0.1 (no rho: the method's best rho)")
    p.add_argument("--metric", default="test_acc", help="metric for --compare (default: test_acc)")
    p.set_defaults(func=cmd_table)

    p = command("report", "one self-contained HTML page: status, tables, figures, failed runs, environment")
    p.add_argument("dir", help=RESULTS_DIR)
    p.add_argument("-o", "--output", metavar="HTML", help="the page (default: DIR/report.html)")
    p.set_defaults(func=cmd_report)

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

    p = command("list", "the registries")
    p.add_argument("what", choices=["masks", "variants", "models", "datasets"], help="which registry")
    p.set_defaults(func=cmd_list)
    return ap


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


def _train_parser(p: argparse.ArgumentParser, train_flags: bool) -> None:
    if train_flags:
        from bench.cli import flags

        flags.add_train_flags(p)
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
    except Exception as exc:
        if not _unknown_name(exc):
            raise
        print(f"sambench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
