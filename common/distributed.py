"""torchrun/DDP initialisation, data samplers and rank-0 helpers.

Scripts call `init_distributed()` once. Under plain `python` it returns a
single-process context and nothing else changes. Under
`torchrun --nproc_per_node=N` it joins the process group that torchrun's
environment variables describe (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None) -> DistContext:
    """Join torchrun's process group if this process was launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    log.info("joined process group: rank %d of %d", rank, world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum `tensor` over all ranks in place and return it."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_with_grad(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0; gradients flow back to each rank's part.

    All ranks must pass tensors of the same shape. When every rank computes the
    same loss from the gathered tensor, the backward pass sums the gradients of
    all ranks, so DDP's averaging afterwards yields the gradient of that loss.
    """
    if not ctx.enabled:
        return tensor
    import torch.distributed.nn.functional as distributed_functional

    return torch.cat(distributed_functional.all_gather(tensor), dim=0)


def all_gather_tensor(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, without gradients."""
    if not ctx.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def broadcast_object(obj, ctx: DistContext):
    """Return rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    ctx: DistContext = DistContext(),
    drop_last: bool = False,
) -> DataLoader:
    """Build a DataLoader whose order depends only on (seed, epoch).

    Under DDP each rank reads its own shard through DistributedSampler and
    `batch_size` is the global batch, split evenly over ranks. The order being
    a function of (seed, epoch) is what lets a resumed run repeat the batches of
    an uninterrupted one.
    """
    if batch_size % ctx.world_size != 0:
        raise ValueError(
            f"global batch size {batch_size} is not divisible by world size {ctx.world_size}; "
            "choose a batch size that is a multiple of the number of processes"
        )
    per_rank = batch_size // ctx.world_size
    if ctx.enabled:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    elif shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    # A dataset with __getitems__ returns whole collated batches, so collation is the identity.
    collate = _identity if hasattr(dataset, "__getitems__") else None
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=drop_last, collate_fn=collate)


def _identity(batch):
    return batch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: torch.nn.Module, device: torch.device, ctx: DistContext) -> torch.nn.Module:
    """Wrap `model` in DistributedDataParallel when running under torchrun."""
    if not ctx.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
