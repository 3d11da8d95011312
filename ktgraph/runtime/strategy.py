"""How many processes train, and everything that depends on it, in one object.

A :class:`Strategy` is what the trainer asks for its loaders, its gradient reduction, its sums
over processes and whether it may write. :class:`Local` is one process; :class:`Distributed`
is one rank of a ``torch.distributed`` job (``torchrun``). Every rank holds the whole cohort and
a shard of each global batch, so logits are exchanged between networks inside one process and a
distributed step computes what the single-process step on the same global batch computes:

- each global batch (the single-process run's batch, in its order) is cut into one shard per
  rank (:class:`ShardedBatches`), so data order, step counts and gate schedules are global;
- each rank weights its losses by its share of the global batch, and after the plan's own backward
  pass(es) every trained parameter's gradient is summed over ranks at once (exact for losses that
  are batch means, whatever the routing: no module wrapper has to follow the plan's backward passes);
- evaluation counts and logged losses are summed over ranks; only rank 0 writes the run directory.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import GraphError, TrainingError

T = TypeVar("T")


class ShardedBatches(Sampler[list[Any]]):
    """This rank's part of each global batch: the batches of a seeded shuffle (in the order a shuffled
    ``DataLoader`` with that seed draws them), each cut into ``world`` near-equal shards.

    Items are ``(index, seed)`` pairs when ``augment_seed`` is given, so that random augmentation
    draws from the sample's own seed: the same crop on any number of processes and workers.
    A final global batch smaller than ``world`` cannot give every rank a sample; it is left out.
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world: int = 1, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, augment_seed: int | None = None) -> None:
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world
        self.shuffle, self.seed, self.drop_last, self.augment_seed = shuffle, seed, drop_last, augment_seed

    def global_batches(self) -> list[int]:
        """The size of every global batch this sampler serves, in order."""
        sizes = [min(self.batch_size, self.size - start) for start in range(0, self.size, self.batch_size)]
        if sizes and (sizes[-1] < self.world or (self.drop_last and sizes[-1] < self.batch_size)):
            sizes.pop()
        return sizes

    def __len__(self) -> int:
        return len(self.global_batches())

    def __iter__(self) -> Iterator[list[Any]]:
        order = list(range(self.size))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            # A DataLoader draws its workers' base seed from its generator before shuffling: drawn
            # here too, the order is the one ``DataLoader(shuffle=True, generator=...)`` gives.
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(self.size, generator=generator).tolist()
        for number, size in enumerate(self.global_batches()):
            shard = order[number * self.batch_size:number * self.batch_size + size][self.rank::self.world]
            if self.augment_seed is None:
                yield shard
            else:
                yield [(index, self.augment_seed * 1_000_003 + index) for index in shard]


class Local:
    """One process: nothing to reduce, everything to write."""

    rank = 0
    world = 1
    is_main = True
    resume_command = "ktgraph run --resume RUN_DIR"  # what a failure message tells the user to run

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world={self.world}, device={self.device})"

    def threads(self, asked: int | None) -> int | None:
        """The intra-op threads this process takes: ``train.threads`` when set, else torch's choice (None)."""
        return asked

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
               num_workers: int = 0, drop_last: bool = False, augment_seed: int | None = None) -> DataLoader:
        """This process's shard of every batch of ``dataset`` (the whole batch when it is alone)."""
        sampler = ShardedBatches(len(dataset), batch_size, rank=self.rank, world=self.world, shuffle=shuffle,
                                 seed=seed, drop_last=drop_last, augment_seed=augment_seed)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)

    # --- collectives: identities on one process --------------------------------------------------------
    def reduce_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Every rank's gradients summed (each rank weighted its loss by its share of the global batch)."""

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over ranks (a new tensor)."""
        return tensor.clone()

    def any(self, flag: bool) -> bool:
        """Whether any rank says so."""
        return flag

    def average_buffers(self, buffers: Sequence[Tensor]) -> None:
        """Floating-point buffers (BatchNorm statistics) replaced by their mean over ranks."""

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""

    def broadcast_object(self, value: T) -> T:
        """Rank 0's ``value`` (a picklable object) on every rank."""
        return value

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """A failed collective (another process ended) becomes a clear error that says how to continue."""
        yield

    def close(self) -> None:
        """Leave the process group (nothing to leave here)."""


class Distributed(Local):
    """One rank of a ``torch.distributed`` job, joined from torchrun's environment variables."""

    def __init__(self, device: torch.device, timeout_s: float = 600.0) -> None:
        super().__init__(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                    device_id=device if device.type == "cuda" else None)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.is_main = self.rank == 0
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))  # processes on this machine
        # Which parameters have a gradient is host-side knowledge: reduced over gloo next to an NCCL
        # group, so that no step waits for the GPU to read it back.
        self._host = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)) \
            if backend == "nccl" else None

    def threads(self, asked: int | None) -> int | None:
        """CPU ranks on one machine divide its cores, unless ``train.threads`` says otherwise."""
        if asked is not None or self.device is None or self.device.type != "cpu":
            return asked
        return cores_each(self.local_world)

    def reduce_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """One bucket of every parameter's gradient (zeros where it has none); whether each has one is
        reduced on the host, so a gradient on some rank is a gradient on every rank."""
        if not params:
            return
        present = torch.tensor([float(p.grad is not None) for p in params])
        with self.guard():
            dist.all_reduce(present, group=self._host)
        flat = torch.cat([(p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in params])
        self._all_reduce(flat)
        offset = 0
        for p, has in zip(params, present.tolist()):
            n = p.numel()
            if has:
                p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def sum(self, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        self._all_reduce(total)
        return total

    def any(self, flag: bool) -> bool:
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def average_buffers(self, buffers: Sequence[Tensor]) -> None:
        floats = [b for b in buffers if b.is_floating_point()]
        if not floats:
            return
        flat = torch.cat([b.reshape(-1) for b in floats])
        self._all_reduce(flat)
        flat /= self.world
        offset = 0
        for b in floats:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()

    def broadcast_module(self, module: nn.Module) -> None:
        with self.guard():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except RuntimeError as err:
            if isinstance(err, dist.DistError) or any(word in str(err) for word in COLLECTIVE_FAILURES):
                raise lost_rank(self.rank, err, self.resume_command) from None
            raise

    def broadcast_object(self, value: T) -> T:
        box = [value]
        with self.guard():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(RuntimeError, dist.DistError):  # a peer may be gone already: leave anyway
                dist.destroy_process_group()

    def _all_reduce(self, tensor: Tensor) -> None:
        with self.guard():
            dist.all_reduce(tensor)


COLLECTIVE_FAILURES = ("gloo", "NCCL", "Connection reset", "Connection closed", "Connection refused", "Broken pipe",
                       "Socket Timeout", "timed out")


def lost_rank(rank: int, err: BaseException, resume: str) -> TrainingError:
    """What every surviving rank says when a collective fails: another process has ended."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip())  # gloo's source location
    first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
    return TrainingError(f"rank {rank}: another process of the job stopped or cannot be reached ({first[:160]}); "
                         f"the whole job stops. Its last checkpoint is intact: continue under torchrun with `{resume}`")


def available_cores() -> int:
    """The cores this process may run on (a job scheduler's CPU set, not the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cores_each(processes: int) -> int:
    """The intra-op threads each of ``processes`` side-by-side processes takes: they divide the cores."""
    return max(1, available_cores() // processes)


def launched() -> bool:
    """Whether this process was started as one rank of several (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(name: str) -> torch.device:
    """This process's device for ``train.device``: under torchrun, the GPU numbered LOCAL_RANK."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if name == "cuda" and not torch.cuda.is_available():
        raise GraphError("train.device is `cuda` but no CUDA device is available", where=("train", "device"),
                         suggestion="use device=auto or device=cpu")
    if not cuda:
        return torch.device("cpu")
    if launched() and local_rank >= torch.cuda.device_count():
        raise GraphError(f"LOCAL_RANK is {local_rank} but this machine has {torch.cuda.device_count()} GPUs",
                         where=("train", "device"),
                         suggestion="start at most as many processes per node as there are GPUs "
                                    "(torchrun --nproc_per_node)")
    device = torch.device("cuda", local_rank if launched() else torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def from_environment(device_name: str = "auto") -> Local:
    """:class:`Distributed` when started by torchrun with more than one process, else :class:`Local`."""
    device = local_device(device_name)
    return Distributed(device) if launched() else Local(device)
