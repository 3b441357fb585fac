"""What a run trains with, built from its config: data, model, base optimizer, SAM, the step.

    setup = build(cfg, comm)        # bench.engine.build.Setup
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from bench import config
from bench.engine.step import train_step


def base_optimizer_class(name: str):
    """The class behind ``base.name`` (config.BASE_OPTIMIZERS lists each one's options)."""
    import torch

    if name == "lion":
        from lion_pytorch import Lion  # Chen et al. 2023, the lion-pytorch package

        return Lion
    return {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]


def make_base_optimizer(cfg: dict, params):
    opts = {k: v for k, v in cfg["base"].items() if k != "name"}
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    return base_optimizer_class(cfg["base"]["name"])(params, **opts)


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


def build(cfg: dict, comm=None) -> Setup:
    """Data, model, base optimizer and SAM, seeded by the config; across processes this process's
    shard of the data, the model in DDP (SyncBatchNorm with sync_bn) and SAM with the ascent mode."""
    import torch

    import masks
    from bench.data.datasets import load_dataset
    from bench.data.loader import make_loaders, make_mask_loader, make_val_loader
    from bench.data.split import run_data_of
    from bench.engine.amp import LossScaler, autocast_factory
    from bench.engine.distributed import device_for
    from bench.engine.sam import SAM
    from bench.models import create_model, pick_device

    device = pick_device(cfg["device"]) if comm is None else device_for(cfg["device"])
    torch.manual_seed(cfg["seed"])
    spec = load_dataset(cfg["dataset"], root=cfg["data_root"], download=cfg["download"])
    spec = run_data_of(spec, cfg)  # the validation split (drawn on the clean labels), then label noise
    shard = (0, 1) if comm is None else (comm.rank, comm.world)
    train_loader, test_loader = make_loaders(spec, cfg["batch_size"], cfg["eval_batch_size"], cfg["seed"], device,
                                             cfg["augment"], accumulate=cfg["accumulate"], shard=shard,
                                             workers=cfg["data_workers"])
    # batches for masks that need data (Fisher, dynamic): fixed order, no augmentation, not sharded
    mask_loader = make_mask_loader(spec, train_loader, cfg["batch_size"], cfg["seed"] + 7919, device,
                                   workers=cfg["data_workers"])
    torch.manual_seed(cfg["seed"])
    model = create_model(cfg["model"], num_classes=spec.num_classes, in_chans=spec.in_chans,
                         img_size=spec.img_size).to(device)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if comm is not None and cfg["sync_bn"] and has_bn:
        if device.type != "cuda":
            raise config.ConfigError("sync_bn", f"{cfg['model']!r} has BatchNorm, and SyncBatchNorm runs on CUDA "
                                                f"only: on {device.type} set sync_bn: false")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    base = make_base_optimizer(cfg, model.parameters())
    opt = SAM(model, base, rho=cfg["rho"], variant=cfg["variant"], mask=config.make_mask(cfg),
              rho_norm=cfg["rho_norm"], freeze_bn_second=cfg["freeze_bn_second"], comm=comm,
              ascent=cfg["ascent"], scaler=LossScaler() if cfg["amp"] == "fp16" else None, **cfg["variant_opts"])
    if opt.is_sam and not opt.selection:
        mask_loader.set_epoch(0)
        opt.build_mask(mask_loader)
        share_selection(opt, comm)
    forward = ascent_forward = model
    if comm is not None:
        from torch.nn.parallel import DistributedDataParallel

        # (buffers: rank 0's BatchNorm running statistics go to every process at each forward, DDP's default)
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:
        ascent_forward = torch.compile(model)
        forward = ascent_forward if forward is model else torch.compile(forward)
    setup = Setup(device=device, train_loader=train_loader, test_loader=test_loader, mask_loader=mask_loader,
                  model=model, forward=forward, ascent_forward=ascent_forward, base=base, opt=opt,
                  base_lrs=[g["lr"] for g in base.param_groups], n_params=masks.n_trainable(model),
                  criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"]),
                  eval_criterion=torch.nn.CrossEntropyLoss(), amp_ctx=autocast_factory(cfg["amp"], device), comm=comm,
                  val_loader=make_val_loader(spec, cfg["eval_batch_size"], cfg["seed"], device, shard,
                                             cfg["data_workers"]))
    if cfg["compile_step"]:
        from bench.engine.fast_step import FastStep

        reference = functools.partial(train_step, forward, opt, criterion=setup.criterion, amp_ctx=setup.amp_ctx,
                                      ascent_model=ascent_forward)
        setup.step = FastStep(model, opt, setup.criterion, setup.amp_ctx, reference, compiled=True,
                              forward=ascent_forward)
    return setup


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
