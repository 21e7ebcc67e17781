"""Process-group setup for every multi-process stage (one small module, as in nanochat).

``init_distributed()`` reads what torchrun (or ``srun torchrun``) exported — ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` — and starts the default process
group: NCCL when CUDA is there, gloo on CPU. Run without torchrun it sets up a world of one on
127.0.0.1, so the single-process CPU run takes exactly the code path of 16 GPUs (DeepSpeed needs a
process group even for one rank).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_rank_zero", "print0", "barrier",
           "all_reduce_sum", "any_rank", "even_rounds"]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str  # "cpu" or "cuda:<local_rank>"

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


T = TypeVar("T")

_WORLD_OF_ONE = "AIGP_WORLD_OF_ONE"  # "<pid>:<port>" of the process that made a world of one for itself
_WORLD_OF_ONE_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR",
                     _WORLD_OF_ONE)
_ENV_BEFORE_WORLD_OF_ONE: dict[str, str | None] = {}  # what the world of one replaced, given back at cleanup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "auto") -> DistInfo:
    """Start (or join the already started) default process group; idempotent."""
    import torch  # noqa: PLC0415 - torch: commands without a process group (aigp simulate) stay fast
    import torch.distributed as dist  # noqa: PLC0415 - torch: commands without a process group (aigp simulate) stay fast

    # A world of one that a *parent* process set up for itself (e.g. pytest running a stage in-process,
    # then launching `aigp` subprocesses) is inherited through the environment; joining it would bind
    # the parent's MASTER_PORT again (EADDRINUSE). Only torchrun/srun worlds and our own are joined.
    own = os.environ.get(_WORLD_OF_ONE, "")
    inherited = bool(own) and own != f"{os.getpid()}:{os.environ.get('MASTER_PORT')}" \
        and own.split(":")[-1] == os.environ.get("MASTER_PORT")
    if "RANK" not in os.environ or inherited:
        # A world of one: what torchrun --nproc_per_node 1 would export (given back by cleanup_distributed).
        _ENV_BEFORE_WORLD_OF_ONE.update({k: os.environ.get(k) for k in _WORLD_OF_ONE_ENV})
        port = str(_free_port()) if inherited or "MASTER_PORT" not in os.environ else os.environ["MASTER_PORT"]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_PORT=port)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ[_WORLD_OF_ONE] = f"{os.getpid()}:{port}"
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise RuntimeError("backend 'nccl' needs CUDA GPUs; on CPU use 'gloo' (or 'auto').")
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                device_id=torch.device(device) if use_cuda else None)
    return DistInfo(rank, world_size, local_rank, backend, device)


def cleanup_distributed() -> None:
    """End of a stage: destroy the process group, except a world of one this process made for itself.

    That one lives as long as the process: DeepSpeed caches its groups (``deepspeed.utils.groups``)
    for the life of the process, so a second DeepSpeed stage in the same process (``run_stage`` twice,
    a notebook) must find the group the first one used; a new one fails in the engine's first
    broadcast ("Group ... is not registered"). The environment it exported is given back, so that a
    program started later (TRL, a torchrun) does not try to bind the port its store still holds."""
    import torch.distributed as dist  # noqa: PLC0415 - torch: commands without a process group (aigp simulate) stay fast

    own = os.environ.get(_WORLD_OF_ONE) == f"{os.getpid()}:{os.environ.get('MASTER_PORT')}"
    if own:
        for key, value in _ENV_BEFORE_WORLD_OF_ONE.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _ENV_BEFORE_WORLD_OF_ONE.clear()
        return
    if dist.is_initialized():
        dist.destroy_process_group()


def is_rank_zero() -> bool:
    """True on global rank 0. ``RANK`` decides where it is set (torchrun and srun export it, and so does
    the world of one while its stage runs); else a live process group (a world of one kept after its
    stage); else there is one process. Never imports torch itself: ``aigp simulate`` stays fast."""
    rank = os.environ.get("RANK")
    if rank is not None:
        return rank == "0"
    tdist = sys.modules.get("torch.distributed")
    if tdist is not None and tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank() == 0
    return True


def print0(*args, **kwargs) -> None:
    """print on rank 0 only (to stderr unless ``file`` is given), flushed: logs of SLURM jobs are files."""
    if is_rank_zero():
        kwargs.setdefault("file", sys.stderr)
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    import torch.distributed as dist  # noqa: PLC0415 - torch: commands without a process group (aigp simulate) stay fast

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over ranks (float64, on the backend's device)."""
    import torch  # noqa: PLC0415 - torch: commands without a process group (aigp simulate) stay fast
    import torch.distributed as dist  # noqa: PLC0415 - torch: commands without a process group (aigp simulate) stay fast

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. one rank got SIGTERM)."""
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def even_rounds(chunks: Sequence[T], rank: int, world_size: int) -> Iterator[tuple[T, bool]]:
    """Deal ``chunks`` (micro-batches) round-robin over ranks: this rank's chunk of every round, and
    whether it is real. Every rank gets the same number of rounds, because ZeRO-3 gathers parameters
    collectively inside forward: a rank whose share ran out gets ``chunks[0]`` to run and discard."""
    rounds = -(-len(chunks) // world_size)
    for r in range(rounds):
        index = r * world_size + rank
        yield (chunks[index], True) if index < len(chunks) else (chunks[0], False)
