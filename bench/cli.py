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

from bench.errors import EXIT_FAIL, EXIT_INVALID, EXIT_OK, Interrupted, InvalidInput, load_yaml, parse_set

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

TRAIN_FLAGS = {  # flag -> config path
    "dataset": "dataset", "model": "model", "variant": "variant", "mask": "mask", "rho": "rho",
    "sparsity": "sparsity", "rho_norm": "rho_norm", "epochs": "epochs", "batch_size": "batch_size",
    "optimizer": "base.name", "lr": "base.lr", "momentum": "base.momentum",
    "weight_decay": "base.weight_decay", "seed": "seed", "label_smoothing": "label_smoothing",
    "schedule": "schedule", "warmup_epochs": "warmup_epochs", "amp": "amp", "device": "device",
    "data_root": "data_root", "eval_batch_size": "eval_batch_size", "log_every": "log_every",
    "nproc": "nproc", "nodes": "nodes", "ascent": "ascent", "accumulate": "accumulate",
    "data_workers": "data_workers",
}
TRAIN_TYPES = {"rho": float, "epochs": int, "batch_size": int, "lr": float, "momentum": float,
               "weight_decay": float, "seed": int, "label_smoothing": float, "warmup_epochs": int,
               "eval_batch_size": int, "log_every": int, "nproc": int, "nodes": int, "accumulate": int,
               "data_workers": int}
BOOL_FLAGS = {"freeze_bn_second": "freeze_bn_second", "channels_last": "channels_last",
              "download": "download", "compile": "compile"}
RESERVED = set(TRAIN_FLAGS) | set(BOOL_FLAGS) | {"no_augment", "no_sync_bn", "mask_opt", "variant_opt", "set", "out",
                                                 "help"}


def _scalar(text: str):
    value = load_yaml(text, "value")
    return text if value is None else value


def variant_flags() -> dict[str, object]:
    """``--<option>`` flags for every registered variant's options (its signature), with a
    default to tell the flag's kind; names taken by other flags are left to --variant-opt."""
    from bench.registries import VARIANTS, variant_options

    flags: dict[str, object] = {}
    for name in VARIANTS.names():
        for option, default in variant_options(name).items():
            if option not in RESERVED:
                flags.setdefault(option, default)
    return flags


def train_overrides(args) -> dict:
    over: dict = {}
    for flag, path in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            over[path] = value
    for flag, path in BOOL_FLAGS.items():
        if getattr(args, flag):
            over[path] = True
    for option in getattr(args, "variant_flag_names", []):
        value = getattr(args, f"variant_{option}")
        if value is not None and value is not False:
            over[f"variant_opts.{option}"] = value
    if args.no_augment:
        over["augment"] = False
    if args.no_sync_bn:
        over["sync_bn"] = False
    if over.get("base.name") == "adamw":
        over["base"] = {"name": "adamw", "lr": over.pop("base.lr", 1e-3), "weight_decay": 0.05}
        over.pop("base.name")
        over.pop("base.momentum", None)
    for key, value in parse_set(args.variant_opt).items():
        over[f"variant_opts.{key}"] = value
    for key, value in parse_set(args.mask_opt).items():
        over[f"mask_opts.{key}"] = value
    over.update(parse_set(args.set))
    return over


def flag_of(field: str, args) -> str:
    """The command-line option that sets a config field (for error messages)."""
    by_path = {path: flag for flag, path in {**TRAIN_FLAGS, **BOOL_FLAGS}.items()}
    if field in by_path:
        return "--" + by_path[field].replace("_", "-")
    top, _, key = field.partition(".")
    if top == "variant_opts" and key:
        if key in getattr(args, "variant_flag_names", []):
            return "--" + key.replace("_", "-")
        return f"--variant-opt {key}"
    if top == "mask_opts" and key:
        return f"--mask-opt {key}"
    if top in ("variant_opts", "mask_opts"):
        return "--" + top.replace("_opts", "-opt")
    return f"--set {field}"


def cmd_train(args) -> int:
    """One run: in this process; in N processes it starts (``--nproc N``); or as one rank of a group
    started by torchrun (RANK/WORLD_SIZE set: every rank runs this command, rank 0 reports)."""
    from bench import config, distributed, train
    from bench.data import DataError, check_available

    over = train_overrides(args)
    launched = distributed.launched()
    if launched:
        over.update(_world_of_launcher(over, args))
    try:
        cfg = config.resolve(over)
    except config.ConfigError as exc:
        raise InvalidInput(f"{flag_of(exc.field, args)} ({exc.render()})") from None
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
    from bench import distributed

    nproc, nodes = distributed.env_world()
    for key, have in (("nproc", nproc), ("nodes", nodes)):
        if key in over and over[key] != have:
            raise InvalidInput(f"--{key} {over[key]}: this process is one of {nproc * nodes} started by a launcher "
                               f"(WORLD_SIZE={nproc * nodes}, LOCAL_WORLD_SIZE={nproc}); leave --{key} out")
    return {"nproc": nproc, "nodes": nodes}


def _train_processes(cfg: dict, out: Path) -> dict:
    """``--nproc N``: N processes of this run on this machine (bench.launch)."""
    from bench import config, launch, rundir, train

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
        from bench.variants import describe_variants

        rows = describe_variants()
        width = max(len(r[0]) for r in rows)
        for name, desc, opts in rows:
            print(f"{name:<{width}}  {desc}" + (f"\n{'':<{width}}    options: {opts}" if opts else ""))
    elif args.what == "models":
        from bench.models import describe_models

        _print_rows(describe_models())
    else:
        from bench.data import describe_datasets

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
    print(analysis.table(folder, fmt="markdown"))
    if args.latex:
        print()
        print(analysis.table(folder, fmt="latex"))
    return EXIT_OK


# --- run / status ---------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from bench import runner
    from bench.suite import load_suite

    if args.max_parallel is not None and args.max_parallel < 1:
        raise InvalidInput(f"--max-parallel: must be >= 1, got {args.max_parallel}")
    out = creatable_dir(args.out, "--out")
    suite = load_suite(args.suite, parse_set(args.set))
    with signals_interrupt():
        return runner.run_suite(suite, out, executor=args.executor, max_parallel=args.max_parallel,
                                dry_run=args.dry_run, wait=not args.no_wait, keep_running=args.keep_running)


def cmd_status(args) -> int:
    from bench import runner

    return runner.print_status(Path(args.target), Path(args.out))


# --- perf -----------------------------------------------------------------------------------------

def cmd_perf(args) -> int:
    from bench import config, perf

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
              f"{rec['ratio']:.1f}x faster batched")
        records = [rec]
    else:
        records = _perf_steps(args, perf)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=2))
    return EXIT_OK


def _perf_steps(args, perf) -> list[dict]:
    configs = perf.parse_configs(args.configs)
    dataset = args.dataset or "digits"
    if args.epoch:
        from bench.data import DataError, check_available

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


def _perf_processes(args, perf, json_path: Path | None) -> int:
    """``--nproc N``: this command again in N processes of one group (bench.launch); rank 0 reports."""
    from bench import distributed, launch

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

def build_parser(with_variant_flags: bool = False) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sambench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a suite (local by default, or SLURM)")
    p.add_argument("suite", help="a suite file (suites/*.yaml)")
    p.add_argument("--out", default="results", help="results folder; runs go to OUT/<suite name>/<run id>/")
    p.add_argument("--executor", choices=["local", "slurm", "debug", "auto"], default="local",
                   help="local processes (default), SLURM job arrays, in process (debug), or auto: "
                        "slurm when `scontrol ping` answers UP, else local")
    p.add_argument("--max-parallel", type=int, default=None,
                   help="local: worker processes (default one per GPU, else one per core, <= 8); "
                        "slurm: array tasks running at once")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state; write nothing")
    p.add_argument("--no-wait", action="store_true", help="submit and return; follow with `sambench status`")
    p.add_argument("--keep-running", action="store_true",
                   help="on Ctrl-C or SIGTERM, leave the local workers running (default: stop them; "
                        "their runs resume from the last finished epoch on the next run)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a run field for every run (epochs=1, base.lr=0.05), or slurm.KEY, name, seeds")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="counts of done/failed/running/... runs, and why runs failed")
    p.add_argument("target", help="a suite file, a suite's results folder, or a results folder of suites")
    p.add_argument("--out", default="results", help="results folder (for a suite file)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("collect", help="one CSV row per run")
    p.add_argument("dir")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("plot", help="accuracy vs sparsity, rho sweeps, runtime vs accuracy, gamma")
    p.add_argument("dir")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("table", help="markdown (and LaTeX) tables, mean ± std over seeds")
    p.add_argument("dir")
    p.add_argument("--latex", action="store_true", default=True)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("train", help="one run, in process")
    for flag in TRAIN_FLAGS:
        kind = TRAIN_TYPES.get(flag, _scalar if flag == "sparsity" else str)
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None)
    for flag in BOOL_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true")
    names = []
    if with_variant_flags:
        for option, default in variant_flags().items():
            names.append(option)
            if isinstance(default, bool):
                p.add_argument("--" + option.replace("_", "-"), dest=f"variant_{option}", action="store_true",
                               help="a variant option")
            else:
                p.add_argument("--" + option.replace("_", "-"), dest=f"variant_{option}", type=_scalar,
                               default=None, metavar="VALUE", help=f"a variant option (default {default!r})")
    p.set_defaults(variant_flag_names=names)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-sync-bn", action="store_true",
                   help="across processes: BatchNorm statistics per process (needed on CPU)")
    p.add_argument("--variant-opt", action="append", metavar="KEY=VALUE", help="a variant option")
    p.add_argument("--mask-opt", action="append", metavar="KEY=VALUE", help="a mask option")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field")
    p.add_argument("--out", help="the run folder (default results/train/<run_id>)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("perf", help="step-time ratios to SGD, in one process")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default=None, help="image shape from this dataset (default: cifar-like)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--configs", default="default",
                   help="comma list of variant:mask[:opts] or a preset (default, paper)")
    p.add_argument("--fisher", action="store_true", help="time the batched vs per-sample Fisher mask")
    p.add_argument("--fisher-samples", type=int, default=1024)
    p.add_argument("--epoch", action="store_true", help="also time a full epoch against its steps")
    p.add_argument("--json", help="write the records to this file")
    p.add_argument("--nproc", type=int, default=1,
                   help="time the step in N processes (DDP; default configs: SGD, SAM all / norm_only with "
                        "ascent synced and local) and report the bytes all-reduced per step")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("list", help="the registries")
    p.add_argument("what", choices=["masks", "variants", "models", "datasets"])
    p.set_defaults(func=cmd_list)
    return ap


def _unknown_name(exc: BaseException) -> bool:
    """A masks.registry.UnknownNameError (looked up only if that module was loaded: commands that
    read files only, like status and collect, never import torch through masks)."""
    registry = sys.modules.get("masks.registry")
    return registry is not None and isinstance(exc, registry.UnknownNameError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # variant options become train flags only for `train` (reading them imports torch)
    args = build_parser(with_variant_flags="train" in argv[:1]).parse_args(argv)
    args.argv = argv
    try:
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
