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

TRAIN_FLAGS = {  # flag -> config path
    "dataset": "dataset", "model": "model", "variant": "variant", "mask": "mask", "rho": "rho",
    "sparsity": "sparsity", "rho_norm": "rho_norm", "epochs": "epochs", "batch_size": "batch_size",
    "optimizer": "base.name", "lr": "base.lr", "momentum": "base.momentum",
    "weight_decay": "base.weight_decay", "seed": "seed", "label_smoothing": "label_smoothing",
    "schedule": "schedule", "warmup_epochs": "warmup_epochs", "amp": "amp", "device": "device",
    "data_root": "data_root", "p": "variant_opts.p", "adaptive": "variant_opts.adaptive",
    "eta": "variant_opts.eta", "eval_batch_size": "eval_batch_size", "log_every": "log_every",
    "label_noise": "label_noise", "label_noise_type": "label_noise_type",
}
BOOL_FLAGS = {"freeze_bn_second": "freeze_bn_second", "channels_last": "channels_last",
              "download": "download", "normalize_bias": "variant_opts.normalize_bias", "compile": "compile"}


def _scalar(text: str):
    value = yaml.safe_load(text)
    return text if value is None else value


def train_overrides(args) -> dict:
    over: dict = {}
    for flag, path in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            over[path] = value
    for flag, path in BOOL_FLAGS.items():
        if getattr(args, flag):
            over[path] = True
    if args.no_augment:
        over["augment"] = False
    if over.get("base.name") == "adamw":
        over["base"] = {"name": "adamw", "lr": over.pop("base.lr", 1e-3), "weight_decay": 0.05}
        over.pop("base.name")
        over.pop("base.momentum", None)
    for key, value in parse_set(args.mask_opt).items():
        over[f"mask_opts.{key}"] = value
    over.update(parse_set(args.set))
    return over


def cmd_train(args) -> int:
    from bench import config as C
    from bench import train

    over = train_overrides(args)
    try:
        cfg = C.resolve(over)
    except C.ConfigError as exc:
        flag = "--" + exc.field.split(".")[-1].replace("_", "-")
        raise InvalidInput(f"{flag} ({exc.render()})") from None
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

    if args.compare:
        try:
            print(analysis.compare(args.dir, *args.compare, metric=args.metric))
        except analysis.CompareError as exc:
            raise InvalidInput(f"--compare: {exc}") from None
        return EXIT_OK
    print(analysis.table(args.dir, fmt="markdown"))
    if args.latex:
        print()
        print(analysis.table(args.dir, fmt="latex"))
    return EXIT_OK


# --- sharpness -----------------------------------------------------------------------------

def cmd_sharpness(args) -> int:
    """Measure sharpness of finished runs (bench.sharpness); every folder is checked first."""
    from bench import data, sharpness

    overrides = parse_set(args.set)
    if args.samples is not None:
        overrides["n_samples"] = args.samples
    if args.device is not None and not (args.device in ("auto", "cpu", "cuda") or args.device.startswith("cuda:")):
        raise InvalidInput(f"--device: got {args.device!r} (allowed: auto, cpu, cuda, cuda:N)")
    try:
        outcomes = sharpness.evaluate_dirs(args.run_dirs, overrides, args.device, args.force)
    except sharpness.SettingsError as exc:
        flag = "--samples" if exc.field == ".n_samples" else f"--set {exc.field.lstrip('.')}"
        raise InvalidInput(f"{flag}: {exc.message}" + (f" (allowed: {', '.join(map(str, exc.allowed))})"
                                                        if exc.allowed else "")) from None
    except (sharpness.RunDirError, data.DataError) as exc:
        raise InvalidInput(str(exc).splitlines()[0]) from None
    locked = [d for d, outcome in outcomes if outcome == "locked"]
    return EXIT_FAIL if locked else EXIT_OK


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


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a run field for every run (epochs=1, base.lr=0.05), or slurm.KEY, name, seeds")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="counts of done/running/pending/failed/diverged runs")
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
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="print the seed-paired difference A - B with its 95%% CI (paired t); A, B: "
                        "METHOD[@RHO], e.g. norm_only@1.0 all@0.1 (no rho: the method's best rho)")
    p.add_argument("--metric", default="test_acc", help="metric for --compare (default test_acc)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("sharpness", help="m-sharpness and Hessian eigenvalue/trace of finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (holding checkpoint.pt)")
    p.add_argument("--samples", type=int, default=None, help="first N training samples (default 1024)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the run's device)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a sharpness option (m=64, steps=10, hessian=false, radii={linf_adaptive: [0.003]})")
    p.add_argument("--force", action="store_true", help="measure again even if result.json holds it")
    p.set_defaults(func=cmd_sharpness)

    p = sub.add_parser("train", help="one run, in process")
    for flag in TRAIN_FLAGS:
        kind = {"rho": float, "sparsity": _scalar, "epochs": int, "batch_size": int, "lr": float,
                "momentum": float, "weight_decay": float, "seed": int, "label_smoothing": float,
                "warmup_epochs": int, "p": _scalar, "eta": float, "eval_batch_size": int,
                "log_every": int, "label_noise": float}.get(flag, str)
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=kind, default=None)
    for flag in BOOL_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true")
    p.add_argument("--no-augment", action="store_true")
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
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("list", help="the registries")
    p.add_argument("what", choices=["masks", "variants", "models", "datasets"])
    p.set_defaults(func=cmd_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    from bench.config import ConfigError
    from masks.registry import UnknownNameError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InvalidInput, ConfigError, UnknownNameError) as exc:
        print(f"sambench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
