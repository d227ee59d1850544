"""Process-group setup (torchrun env vars; NCCL on GPU, gloo on CPU) and the gather that gives
InfoNCE every rank's negatives with gradients flowing back to their owners."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from model.inference import default_device


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch_rank() -> int:
    """This process's rank as torchrun set it (RANK), 0 in a single process: rank 0 reports for the run."""
    return int(os.environ.get("RANK", "0"))


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = launch_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = default_device(device).type == "cuda"  # each rank then takes the GPU of its local rank
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, chosen)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's (B_r, D) tokens in rank order (B_r may differ); returns (all, offset).

    Gradients flow back to each rank's own tokens (torch.distributed.nn all_gather).
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([tokens.shape[0]], device=tokens.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = torch.nn.functional.pad(tokens, (0, 0, 0, max(counts) - tokens.shape[0]))
    parts = dist_fn.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]), sum(counts[:rank])


def all_true(flag: bool, device: torch.device) -> bool:
    """True when `flag` holds on every rank (a single process: the flag itself)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
