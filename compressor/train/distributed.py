"""Process-group setup under ``torchrun`` (NCCL on CUDA, gloo on CPU) and the few collectives
the trainer needs.  A plain ``python`` run is a world of one and touches no process group."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> "DistEnv":
        """Join the process group ``torchrun`` describes in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if not self.enabled:
            return values
        return self.all_reduce_(torch.tensor(values, dtype=torch.float64)).tolist()

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum of ``tensor`` over all processes (a no-op in a world of one).  gloo reduces
        CPU tensors, NCCL CUDA ones: the tensor is moved for the collective and copied back."""
        if self.enabled:
            backend_cuda = dist.get_backend() == "nccl"
            work = tensor.cuda() if backend_cuda and not tensor.is_cuda else tensor
            dist.all_reduce(work)
            if work is not tensor:
                tensor.copy_(work)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_as_main() -> bool:
    """False in the non-zero ranks ``torchrun`` starts; readable before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


class DeviceError(ValueError):
    """The device asked for does not exist or is not present on this machine."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is the local CUDA device when there is one (per ``LOCAL_RANK``), else CPU.
    Raises :class:`DeviceError` for a device that is not here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {name!r}: compressor trains on cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but CUDA is not available on this machine "
                              "(use --device cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
