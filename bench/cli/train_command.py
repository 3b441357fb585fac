"""``sambench train``: one run in this process, in N processes it starts, or as one rank under torchrun."""
from __future__ import annotations

from pathlib import Path

from bench.cli.paths import creatable_dir
from bench.errors import EXIT_FAIL, EXIT_OK, InvalidInput, signals_interrupt


def cmd_train(args) -> int:
    """One run: in this process; in N processes it starts (``--nproc N``); or as one rank of a group
    started by torchrun (RANK/WORLD_SIZE set: every rank runs this command, rank 0 reports)."""
    from bench import config
    from bench.cli.flags import option_for, train_overrides
    from bench.data.datasets import DataError, check_available
    from bench.engine import distributed, train

    over = train_overrides(args)
    launched = distributed.launched()
    if launched:
        over.update(_world_of_launcher(over, args))
    try:
        cfg = config.resolve(over)
    except config.ConfigError as exc:
        raise InvalidInput(f"{option_for(exc.field)} ({exc.render()})") from None
    if cfg["data_root"] is not None and not Path(cfg["data_root"]).is_dir():
        raise InvalidInput(f"--data-root: no such directory: {cfg['data_root']}")
    try:
        check_available(cfg["dataset"], cfg["data_root"], cfg["download"])
    except DataError as exc:
        raise InvalidInput(f"--data-root / dataset {cfg['dataset']!r}: {exc}") from None
    out = creatable_dir(args.out, "--out") if args.out else Path("results") / "train" / config.run_id(cfg)
    with signals_interrupt():
        if launched:
            from bench.orchestration import launch

            guarded = launch.guard_this_process(out)  # the rank trains in a child whose death is recorded
            if guarded is not None:
                return guarded
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
            result = _train_here(cfg, out)
    print(f"{result['status']}: test accuracy {result['test_acc']:.2f}% after {result['epochs']} epochs, "
          f"{result['wall_time_s']:.1f} s, perturbed fraction {result['perturbed_fraction']:.6f} -> {out}"
          if result.get("test_acc") is not None else
          f"{result['status']}{': ' + result['error'] if result.get('error') else ''} -> {out}")
    return EXIT_OK if result["status"] == "done" else EXIT_FAIL


def _train_here(cfg: dict, out: Path) -> dict:
    """The run in this process; a failure it recorded (result.json, with its traceback) is reported
    as its one-line error (exit 1), not as a traceback."""
    from bench import rundir
    from bench.engine import train

    try:
        return train.run(cfg, out, progress=True)
    except Exception:
        recorded = rundir.read_result(out)
        if recorded.kind != "failed" or recorded.data.get("recorded_by") != "train":
            raise
        return {**recorded.data, "error": f"{recorded.data['error']} (traceback in {out / 'result.json'})"}


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
    from bench.orchestration import launch

    if cfg["nodes"] > 1:
        raise InvalidInput(f"--nodes {cfg['nodes']}: `sambench train --nproc` starts processes on this machine only; "
                           "start each node with torchrun, or run a suite with --executor slurm")
    rid = config.run_id(cfg)
    rundir.check_owner(out, rid)
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_config(out, rid, None, cfg, config.variant_options(cfg), keep=True)
    try:
        return launch.train_run(out, cfg["nproc"])
    except rundir.RunLocked as exc:
        raise InvalidInput(str(exc)) from None
