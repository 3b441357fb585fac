"""What a run trains with, built from its resolved config: the one build path.

    inputs = build_inputs(cfg, comm)              # device, data (with label noise), loaders, model
    opt = build_optimizer(cfg, inputs.model)      # base optimizer + SAM with the run's mask
    setup = build(cfg, comm)                      # both, the forwards, the losses, the step

``sambench train``, suites, ``sambench perf`` and the sharpness of a finished run build their
data, model and optimizer through these functions (perf and sharpness use the parts they need:
:func:`load_data`, :func:`make_model`, :func:`build_optimizer`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from bench import config
from bench.config.optimizers import optimizer_class
from bench.engine.step import train_step


def make_base_optimizer(cfg: dict, params):
    """The run's base optimizer (``base``: bench.config.optimizers) over ``params``."""
    opts = {k: v for k, v in cfg["base"].items() if k != "name"}
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    return optimizer_class(cfg["base"]["name"])(params, **opts)


@dataclass
class Inputs:
    """A run's device, data and model (what :func:`build_inputs` builds)."""

    device: Any
    spec: Any                 # the data set (bench.data.datasets.DataSpec), training labels as trained
    train_loader: Any
    test_loader: Any
    mask_loader: Any          # batches for masks that need data: fixed order, no augmentation, not sharded
    model: Any
    val_loader: Any = None    # the held-out validation split (val_split), evaluated like test; else None


@dataclass
class Setup:
    """Everything a run trains with, built from its config."""

    device: Any
    train_loader: Any
    test_loader: Any
    mask_loader: Any
    model: Any                # the model itself (checkpoints, masks, SAM)
    forward: Any              # what the descent runs through: DDP across processes, torch.compile'd if asked
    ascent_forward: Any       # the ascent and evaluation: the model outside DDP (compiled if asked)
    base: Any                 # the base optimizer
    opt: Any                  # bench.engine.sam.SAM around it
    base_lrs: list[float]
    n_params: int
    criterion: Any
    eval_criterion: Any
    amp_ctx: Any
    comm: Any = None          # bench.engine.distributed.Comm across processes, else None
    step: Any = None          # bench.engine.fast_step.FastStep (compile_step), else train_step runs
    val_loader: Any = None    # the held-out validation split (val_split), evaluated like test; else None


def run_device(cfg: dict, comm=None):
    """The device this process trains on (across processes: its rank's GPU)."""
    from bench.engine.distributed import device_for
    from bench.models import pick_device

    return pick_device(cfg["device"]) if comm is None else device_for(cfg["device"])


def load_data(cfg: dict, download: bool | None = None):
    """The run's data set as it trains: the validation split held out (drawn on the clean labels),
    then the run's label noise on the part that trains (bench.data.split)."""
    from bench.data.datasets import load_dataset
    from bench.data.split import run_data_of

    spec = load_dataset(cfg["dataset"], root=cfg["data_root"], download=cfg["download"] if download is None
                        else download)
    return run_data_of(spec, cfg)


def make_model(cfg: dict, spec, device, comm=None):
    """The run's model for the data set, initialized from the seed, on ``device``; across processes
    with SyncBatchNorm (sync_bn, CUDA only); channels-last if asked."""
    import torch

    from bench.models import create_model, has_batchnorm

    torch.manual_seed(cfg["seed"])
    model = create_model(cfg["model"], num_classes=spec.num_classes, in_chans=spec.in_chans,
                         img_size=spec.img_size).to(device)
    if comm is not None and cfg["sync_bn"] and has_batchnorm(model):
        if device.type != "cuda":
            raise config.ConfigError("sync_bn", f"{cfg['model']!r} has BatchNorm, and SyncBatchNorm runs on CUDA "
                                                f"only: on {device.type} set sync_bn: false")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_inputs(cfg: dict, comm=None) -> Inputs:
    """Device, data, loaders (this process's shard of every batch) and model, seeded by the config."""
    import torch

    from bench.data.loader import make_loaders, make_mask_loader, make_val_loader

    device = run_device(cfg, comm)
    torch.manual_seed(cfg["seed"])
    spec = load_data(cfg)
    shard = (0, 1) if comm is None else (comm.rank, comm.world)
    train_loader, test_loader = make_loaders(spec, cfg["batch_size"], cfg["eval_batch_size"], cfg["seed"], device,
                                             cfg["augment"], accumulate=cfg["accumulate"], shard=shard,
                                             workers=cfg["data_workers"])
    mask_loader = make_mask_loader(spec, train_loader, cfg["batch_size"], cfg["seed"] + 7919, device,
                                   workers=cfg["data_workers"])
    model = make_model(cfg, spec, device, comm)
    val_loader = make_val_loader(spec, cfg["eval_batch_size"], cfg["seed"], device, shard, cfg["data_workers"])
    return Inputs(device, spec, train_loader, test_loader, mask_loader, model, val_loader)


def build_optimizer(cfg: dict, model, comm=None, mask_data=None):
    """The base optimizer and SAM around it (``opt.base_optimizer``) with the run's mask (the one
    validation built, bench.config.make_mask), variant, rho and ascent mode; a mask that needs data
    is built from ``mask_data`` (an iterable of batches, or a loader with ``set_epoch``), and across
    processes every process takes rank 0's selection."""
    from bench.engine.amp import LossScaler
    from bench.engine.sam import SAM

    base = make_base_optimizer(cfg, model.parameters())
    opt = SAM(model, base, rho=cfg["rho"], variant=cfg["variant"], mask=config.make_mask(cfg),
              rho_norm=cfg["rho_norm"], freeze_bn_second=cfg["freeze_bn_second"], comm=comm,
              ascent=cfg["ascent"], scaler=LossScaler() if cfg["amp"] == "fp16" else None, **cfg["variant_opts"])
    if opt.is_sam and not opt.selection:
        if hasattr(mask_data, "set_epoch"):
            mask_data.set_epoch(0)
        opt.build_mask(mask_data)
        share_selection(opt, comm)
    return opt


def build(cfg: dict, comm=None) -> Setup:
    """Data, model, base optimizer and SAM, seeded by the config; across processes this process's
    shard of the data, the model in DDP (SyncBatchNorm with sync_bn) and SAM with the ascent mode."""
    import torch

    import masks
    from bench.engine.amp import autocast_factory

    inputs = build_inputs(cfg, comm)
    model, device = inputs.model, inputs.device
    opt = build_optimizer(cfg, model, comm, inputs.mask_loader)
    forward = ascent_forward = model
    if comm is not None:
        from torch.nn.parallel import DistributedDataParallel

        # (buffers: rank 0's BatchNorm running statistics go to every process at each forward, DDP's default)
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:
        ascent_forward = torch.compile(model)
        forward = ascent_forward if forward is model else torch.compile(forward)
    base = opt.base_optimizer
    setup = Setup(device=device, train_loader=inputs.train_loader, test_loader=inputs.test_loader,
                  mask_loader=inputs.mask_loader, model=model, forward=forward, ascent_forward=ascent_forward,
                  base=base, opt=opt, base_lrs=[g["lr"] for g in base.param_groups],
                  n_params=masks.n_trainable(model),
                  criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"]),
                  eval_criterion=torch.nn.CrossEntropyLoss(), amp_ctx=autocast_factory(cfg["amp"], device), comm=comm,
                  val_loader=inputs.val_loader)
    if cfg["compile_step"]:
        setup.step = _fast_step(setup)
    return setup


def _fast_step(setup: Setup):
    """The fused SAM step under torch.compile (bench.engine.fast_step), the reference as its fallback."""
    from bench.engine.fast_step import FastStep

    reference = functools.partial(train_step, setup.forward, setup.opt, criterion=setup.criterion,
                                  amp_ctx=setup.amp_ctx, ascent_model=setup.ascent_forward)
    return FastStep(setup.model, setup.opt, setup.criterion, setup.amp_ctx, reference, compiled=True,
                    forward=setup.ascent_forward)


def share_selection(opt, comm) -> None:
    """Across processes: every process takes rank 0's mask (a mask built from data could differ in
    the last bit on GPUs), in one broadcast of the whole selection."""
    import torch

    if comm is None or opt.mask is None:
        return
    params = dict(opt.model.named_parameters())
    names = [n for n, _ in opt._trainable]
    flat = torch.cat([(opt.selection[n] if n in opt.selection else torch.zeros_like(params[n], dtype=torch.bool))
                      .reshape(-1).to(torch.uint8) for n in names])
    comm.broadcast_([flat], tag="mask")
    parts = flat.bool().split([params[n].numel() for n in names])
    opt.set_selection({n: p.view_as(params[n]) for n, p in zip(names, parts) if bool(p.any())})
