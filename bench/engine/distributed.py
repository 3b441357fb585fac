"""The process group of a run that spans several processes (GPUs, nodes): set up, talk, tear down.

    comm = distributed.init_from_env("auto")   # None in a one-process run
    comm.average_(tensors)                     # ONE flattened all-reduce (mean over processes)

``init_from_env`` reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which
torchrun exports, which ``submitit.helpers.TorchDistributedEnvironment().export()`` exports inside
a SLURM job of several tasks, and which :mod:`bench.orchestration.launch` exports for ``sambench train --nproc``.
The backend is nccl on CUDA and gloo on CPU. Every collective has a bounded timeout
(``SAMBENCH_DIST_TIMEOUT_S``, default 600 s): a rank that died ends the others' wait with an
error (the run is then recorded as failed) instead of a hang.

:class:`Comm` is what the optimizer and the training loop are handed: they never look at the
global process group themselves, so a one-process reference and a distributed run can live in
one process (the tests do that). It counts the bytes it all-reduces (``sambench perf``).
"""
from __future__ import annotations

import datetime
import os
from collections import defaultdict
from typing import Any

import torch

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """The process group could not be set up (missing variables, a world the run does not expect)."""


def launched() -> bool:
    """Whether this process is one rank of several (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def env_world() -> tuple[int, int]:
    """(processes per node, nodes) that the launcher's environment describes."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    if local < 1 or world % local:
        raise DistributedError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local}")
    return local, world // local


def timeout_s() -> float:
    value = os.environ.get("SAMBENCH_DIST_TIMEOUT_S")
    return float(value) if value else DEFAULT_TIMEOUT_S


def device_for(name: str) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK (modulo the visible GPUs) for auto/cuda, else as named."""
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local % max(1, torch.cuda.device_count()))
    return torch.device(name)


def init_from_env(device: str = "auto") -> Comm | None:
    """Join the process group the environment describes; None when this is a one-process run.

    Idempotent: a process already in a group gets its Comm back."""
    import torch.distributed as dist

    if not launched():
        return None
    if dist.is_initialized():
        return Comm()
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start the processes with "
                               f"torchrun, `sambench train --nproc N` or a SLURM suite")
    dev = device_for(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()),
                            **({"device_id": dev} if dev.type == "cuda" else {}))
    return Comm()


def current() -> Comm | None:
    """The Comm of the process group this process is in (None: one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Comm()
    return None


def destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    comm = current()
    return 0 if comm is None else comm.rank


def world() -> int:
    comm = current()
    return 1 if comm is None else comm.world


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    comm = current()
    if comm is not None:
        comm.barrier()


class Comm:
    """The default process group, as the training code uses it. Counts the bytes it all-reduces by tag."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.bytes: dict[str, int] = _SHARED_COUNTS

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- tensors ---------------------------------------------------------------------------
    def average_(self, tensors: list[torch.Tensor], tag: str = "ascent") -> int:
        """Mean over the processes, in place, as ONE all-reduce of the flattened tensors (one per
        dtype if they differ). Returns the bytes all-reduced."""
        sent = 0
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
        for t in tensors:
            by_dtype[t.dtype].append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            self._dist.all_reduce(flat)
            flat.div_(self.world)
            torch._foreach_copy_(group, [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in group]),
                                                                       group)])
            sent += flat.numel() * flat.element_size()
        self.bytes[tag] += sent
        return sent

    def sum_(self, tensor: torch.Tensor, tag: str = "metrics") -> torch.Tensor:
        """Sum over the processes, in place."""
        self._dist.all_reduce(tensor)
        self.bytes[tag] += tensor.numel() * tensor.element_size()
        return tensor

    def any(self, flag: bool | torch.Tensor, device: torch.device | None = None, tag: str = "flags") -> bool:
        """True on every process if it is true on any."""
        t = torch.as_tensor(flag, dtype=torch.float32, device=device).reshape(1).clone()
        self.sum_(t, tag)
        return bool(t.item() > 0)

    def broadcast_(self, tensors: list[torch.Tensor], tag: str = "broadcast") -> None:
        """Rank 0's values, in place on every process."""
        for t in tensors:
            self._dist.broadcast(t, src=0)
            self.bytes[tag] += t.numel() * t.element_size()

    # --- objects ------------------------------------------------------------------------------
    def share(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every process (small picklable values: decisions, not tensors)."""
        box = [obj if self.is_main else None]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self._dist.barrier()


_SHARED_COUNTS: dict[str, int] = defaultdict(int)   # bytes per tag, for this process


def reset_counts() -> None:
    _SHARED_COUNTS.clear()


def counts() -> dict[str, int]:
    return dict(_SHARED_COUNTS)


# --- rank 0 decides, the others follow -------------------------------------------------------

class PeerError(RuntimeError):
    """An error rank 0 met and told the other ranks about."""


def announce(comm: Comm | None, outcome: Any = None, error: BaseException | None = None) -> None:
    """Rank 0: tell the other ranks what it decided (or which error stopped it)."""
    if comm is not None and comm.world > 1:
        comm.share({"outcome": outcome, "error": None if error is None else
                    (type(error).__name__, str(error))})


def follow(comm: Comm, known: dict[str, type] | None = None) -> Any:
    """The other ranks: rank 0's decision, or its error raised here (as the same class when it is in
    ``known``, else :class:`PeerError`)."""
    msg = comm.share()
    if msg["error"] is not None:
        name, text = msg["error"]
        cls = (known or {}).get(name, PeerError)
        raise cls(text if cls is not PeerError else f"rank 0: {name}: {text}")
    return msg["outcome"]
