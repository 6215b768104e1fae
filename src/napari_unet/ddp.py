"""Training one model on several processes (ranks) with DistributedDataParallel.

``torchrun`` starts the ranks and tells each its place through the environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`start` reads it, picks the rank's device (``cuda:LOCAL_RANK``
with NCCL, else the CPU with gloo) and joins the process group. The training loop
(:func:`napari_unet.training.train_iter`) takes the :class:`Ranks` and uses the small
collectives here: :func:`agree` (the budget and stop decision, so every rank ends at the
same step) and :func:`mean` (loss normalisation and the reported loss). See
docs/training.md, "Many GPUs and clusters".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import choose_device

#: environment variables torchrun sets for every rank
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class RankFailure(RuntimeError):
    """A collective operation failed: another rank died or was stopped.

    ``model`` holds the best model so far on the main rank (None elsewhere)."""

    def __init__(self, message: str, model=None):
        super().__init__(message)
        self.model = model


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes.

    Attributes:
        rank: 0..world_size-1, unique over all nodes; rank 0 validates and writes files.
        world_size: number of training processes (all nodes).
        local_rank: index on this node (its GPU on CUDA).
        local_world_size: number of training processes on this node.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (torch.distributed.run) started."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def ranks_from_environment() -> Ranks:
    """The :class:`Ranks` torchrun gave this process (:data:`SINGLE` outside torchrun)."""
    if not launched_by_torchrun():
        return SINGLE
    world_size = int(os.environ["WORLD_SIZE"])
    return Ranks(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
    )


def rank_device(requested: str, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when ``requested`` ("auto", "cuda",
    ...) resolves to CUDA, else the CPU.

    Raises:
        ValueError: MPS (DistributedDataParallel runs on CUDA or the CPU), or fewer
            GPUs on this node than ranks.
    """
    device = choose_device(None if requested == "auto" else requested)
    if not ranks.distributed:
        return device
    if device.type == "mps":
        raise ValueError("training on several processes runs on CUDA or the CPU, not on mps")
    if device.type != "cuda":
        return torch.device("cpu")
    if ranks.local_world_size > torch.cuda.device_count():
        raise ValueError(
            f"{ranks.local_world_size} processes on this node but only "
            f"{torch.cuda.device_count()} GPU(s); use at most one process per GPU"
        )
    return torch.device("cuda", ranks.local_rank)


def cpu_threads(ranks: Ranks, cores: int | None = None) -> int:
    """torch CPU threads per rank: this node's cores shared by its ranks (at least 1)."""
    return max(1, (cores or os.cpu_count() or 1) // ranks.local_world_size)


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group of ``ranks`` (NCCL on CUDA, gloo on the CPU); a no-op for
    a single process. torchrun's environment gives the address and port."""
    if not ranks.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def stop() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str:
    """The process group's backend ("gloo", "nccl"), or "none"."""
    return dist.get_backend() if dist.is_initialized() else "none"


def agree(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    """The largest of each value over all ranks (e.g. budget used, stop requested), so
    that every rank takes the same decision.

    Raises:
        RankFailure: another rank died or left (the collective failed).
    """
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    _collective(dist.all_reduce, tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def mean(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``value`` (a 0-d tensor) averaged over the ranks; differentiable-free (a copy).

    Raises:
        RankFailure: another rank died or left.
    """
    if not ranks.distributed:
        return value
    total = value.detach().clone()
    _collective(dist.all_reduce, total, op=dist.ReduceOp.SUM)
    return total / ranks.world_size


def broadcast(value, ranks: Ranks):
    """Rank 0's ``value`` (any picklable object) on every rank.

    Raises:
        RankFailure: another rank died or left.
    """
    if not ranks.distributed:
        return value
    box = [value]
    _collective(dist.broadcast_object_list, box, src=0)
    return box[0]


def _collective(operation, tensor, **kwargs) -> None:
    try:
        operation(tensor, **kwargs)
    except RuntimeError as error:
        raise RankFailure(failure_message(error)) from error


def failure_message(error: BaseException) -> str:
    """One sentence for a failed collective or step of a distributed run: ours, and
    the first sentence of the backend's error without its source location."""
    if isinstance(error, RankFailure):
        return str(error)
    text = str(error).strip() or type(error).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])  # "[.../pair.cc:553] "
    return f"another training process failed or was stopped ({text.split('. ')[0]})"
