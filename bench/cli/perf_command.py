"""``sambench perf``: step times, one process or N, the Fisher mask, an epoch, the orchestration at scale."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.cli.paths import creatable_file
from bench.errors import EXIT_OK, InvalidInput, RunFailed


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
