"""torchrun plumbing: process group, DDP or FSDP2 wrapping, reductions, full state dicts.

One code path for one process and for many: with no torchrun environment, `init()` gives
rank 0 of 1 and every helper here is a no-op. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> Dist:
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return Dist(rank, world, local, device)


def shutdown() -> None:
    """Destroy the process group, once the models that hold it are gone (the CLI calls this
    after its command returns). FSDP's DTensors keep the group alive through their device mesh:
    destroyed while a model still held it, the group's gloo threads were torn down later, at
    interpreter exit, and a rank died there with "terminate called without an active exception"
    (SIGABRT/SIGSEGV) about one run in 12 on a loaded 2-core machine."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # the trainer's reference cycles, so the group's last holder is the registry
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, fsdp: bool) -> nn.Module:
    """DDP (a full replica per rank) or FSDP2 (parameters sharded per decoder block)."""
    if not d.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def all_reduce_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on CPU, gathered if FSDP sharded it (collective for sharded tensors)."""
    if hasattr(t, "full_tensor"):  # a DTensor
        t = t.full_tensor()
    return t.detach().cpu()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `like`: this rank's shard if `like` is an FSDP DTensor, else a copy on its device."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full.to(like.device, like.dtype).clone()
