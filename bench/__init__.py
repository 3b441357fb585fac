"""sambench's engine and tools, one subpackage per layer (dependencies point down):

    cli/            the ``sambench`` command line: parsers, commands, train flags
    perf/           ``sambench perf``: step times, orchestration at scale, the GPU summary
    orchestration/  suite files and their cache, executors (local, SLURM, debug), launch, the job
    engine/         masked SAM and its variants, the training step and loop, mixed precision, DDP
    config/         the run config: fields, defaults, checks, run ids
    loggers/        TensorBoard, W&B, MLflow
    measure/        sharpness and curvature of a trained model
    models/         CIFAR ResNets, Wide ResNets, ResNeXt, ViTs, timm models
    data/           data sets as tensors, the device-side loader, image folders, where files are

and the leaves every layer may use: ``errors`` (bad input, exit codes), ``registries``,
``rundir`` (the run-folder rule), ``io`` (atomic files), ``env`` (the recorded environment),
``console`` (warnings for people). ``bench.sam`` is the documented path of the SAM wrapper.
This file imports nothing.
"""
