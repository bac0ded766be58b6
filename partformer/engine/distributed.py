"""torch.distributed helpers: one code path for a single process and for torchrun (one or many nodes).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def resolve_device(device=None) -> torch.device:
    """``device`` (a name, a ``torch.device`` or None = auto) as a torch device. A name that is
    not a device, or CUDA on a machine without it, is a ConfigError (one line, exit 2)."""
    from partformer.config import DEVICE_HELP, ConfigError, check_device_name
    if isinstance(device, torch.device):
        device = str(device)
    device = device or "auto"
    if not check_device_name(device):
        raise ConfigError(f"device {device!r} is not supported; use {DEVICE_HELP}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but CUDA is not available on this "
                              "machine (torch.cuda.is_available() is False); use cpu or auto")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..."
                              f"{torch.cuda.device_count() - 1})")
    return torch.device(device)


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group when launched by torchrun; return this process's device
    (checked: :func:`resolve_device`)."""
    resolve_device(device)
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not is_distributed():
        backend = "nccl" if want_cuda else "gloo"
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    if want_cuda:
        if device.startswith("cuda:") and not is_distributed():
            return torch.device(device)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place, returned for convenience)."""
    if is_distributed():
        dev = t.device
        if dist.get_backend() == "nccl" and dev.type != "cuda":
            moved = t.cuda()
            dist.all_reduce(moved)
            t.copy_(moved.to(dev))
        else:
            dist.all_reduce(t)
    return t


def all_gather_objects(obj: Any) -> List[Any]:
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm running statistics) to every rank. DDP does this at the
    start of each training forward; between epochs the ranks' buffers hold their own last-batch
    updates, so call this before validating or saving (rank 0's copy is the one written)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for b in module.buffers():
            dist.broadcast(b, src=src)


class TrainSampler(Sampler[int]):
    """Shuffling sampler for training, single-process and distributed alike.

    The permutation of epoch ``e`` comes from ``seed + e`` (per-epoch reseeding, identical on every
    rank); each rank takes a strided share. ``drop_last`` trims the permutation to a multiple of the
    world size so every rank runs the same number of steps. ``set_epoch(e, skip=n)`` skips the first
    ``n`` samples of this rank's share: a run resumed in the middle of an epoch sees exactly the
    samples an uninterrupted run would have seen.
    """

    def __init__(self, dataset_len: int, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: int = 0, shuffle: bool = True):
        self.n = dataset_len
        self.num_replicas = num_replicas if num_replicas is not None else get_world_size()
        self.rank = rank if rank is not None else get_rank()
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0
        self.per_rank = self.n // self.num_replicas

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order = order[: self.per_rank * self.num_replicas]
        mine = order[self.rank::self.num_replicas]
        return iter(mine[self.skip:])

    def __len__(self) -> int:
        return self.per_rank - self.skip


class EvalSampler(Sampler[int]):
    """Strided split of the dataset over ranks with NO padding and NO dropping.

    torch's DistributedSampler pads by repeating samples, which would count some images twice in
    pooled metrics; here every sample is seen exactly once across ranks.
    """

    def __init__(self, dataset_len: int, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None):
        self.n = dataset_len
        self.num_replicas = num_replicas if num_replicas is not None else get_world_size()
        self.rank = rank if rank is not None else get_rank()

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.num_replicas))
