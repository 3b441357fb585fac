"""The environment recorded with every result: versions, device, git commit, host."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    if os.environ.get("SAMBENCH_GIT_COMMIT"):
        return os.environ["SAMBENCH_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else None
        if commit:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                                   timeout=5).stdout.strip()
            commit += "-dirty" if dirty else ""
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device=None) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    for name in ("torchvision", "timm", "submitit"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if device is not None:
        device = torch.device(device)
        info["device"] = str(device)
        info["device_name"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                               else platform.processor() or platform.machine())
    return info
