"""PyTorch DistributedDataParallel support, launched by ``torchrun`` (no home-made process management).

- ``setup()`` joins the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR):
  NCCL on CUDA, gloo on CPU (so CI tests 2 processes without a GPU).
- ``GlobalBatchSampler``: the training order is a pure function of (seed, epoch): the same global
  permutation (or class-balanced draw) on every rank, each global batch of ``batch_size`` split into
  equal per-rank slices. One process and N processes therefore see the same global batches, and a
  run resumes on a different number of processes.
- ``shard(n)`` / ``gather_predictions``: evaluation splits the sample indices without padding (so
  no sample is counted twice) and gathers them back in order: every sample exactly once.
- Rank 0 alone writes files; ``is_main()`` guards every write.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger("cvsjepa")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def setup() -> torch.device | None:
    """Join torchrun's process group when launched by it; returns the device for this rank, or None
    when not distributed (the caller's device choice stands)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    if not is_main():
        log.setLevel(logging.WARNING)  # one voice in the terminal
    return device


def teardown(failed: bool = False) -> None:
    """Leave the process group. After a failure no barrier: the other ranks may be waiting in a
    collective this rank will never join; exiting lets torchrun stop them instead of hanging."""
    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch, for ``set_epoch(e)``'s order.

    ``weights`` (optional): class-balanced sampling with replacement (torch.multinomial) instead
    of a permutation. ``batch_size`` is the global batch; it must divide by the world size.
    ``groups`` (optional): ``(group of each sample, groups per block)``, for clips decoded from videos
    (:func:`cvsjepa.data.video_frames.decode_groups`): the groups are shuffled into blocks and the
    drawn order is stably sorted by block, so samples stay in random order within a block and each
    process decodes each video about once per epoch instead of once per clip.
    """

    def __init__(self, n: int, batch_size: int, seed: int, weights: torch.Tensor | None = None,
                 groups: tuple[list[int], int] | None = None):
        rank, size = world()
        if batch_size % size:
            raise ValueError(f"train.batch_size={batch_size} (the global batch) must be a multiple of the "
                             f"{size} processes")
        self.n, self.batch_size, self.seed, self.weights, self.groups = n, batch_size, seed, weights, groups
        self.rank, self.size, self.epoch = rank, size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights.double(), self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        if self.groups is not None:
            group, per_block = self.groups
            group = torch.as_tensor(group)
            block = torch.randperm(int(group.max()) + 1, generator=g) // per_block  # each group's block
            order = order[torch.sort(block[group[order]], stable=True).indices]
        return order.tolist()

    def __iter__(self):
        order = self.order()
        for start in range(0, self.n, self.batch_size):
            batch = order[start:start + self.batch_size]
            if len(batch) < self.size:
                # a short last batch that cannot give every rank a sample would leave a rank without a
                # step (DDP would hang); drop it (at most world_size - 1 samples, never in one process)
                return
            per = -(-len(batch) // self.size)  # ceil: a short last batch splits unevenly
            yield batch[self.rank * per:(self.rank + 1) * per]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self.size else 0)


def shard(n: int) -> list[int]:
    """This rank's evaluation indices: a strided split with no padding."""
    rank, size = world()
    return list(range(rank, n, size))


def gather_objects(obj):
    """All ranks' ``obj`` in rank order (a one-element list outside DDP)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def no_sync(model, sync: bool):
    """Skip DDP's gradient all-reduce on accumulation micro-steps that do not step the optimizer."""
    if sync or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()


def all_reduce_mean(value: float, weight: int) -> tuple[float, int]:
    """Weighted mean of a per-rank value over ranks, and the total weight."""
    rank, size = world()
    if size == 1:
        return value, weight
    t = torch.tensor([value * weight, float(weight)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / max(t[1], 1)), int(t[1])
