"""Training on several processes (``torchrun``) with DistributedDataParallel.

Refiner and detector training share these helpers. A run started by ``torchrun`` (or anything
else that sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``) becomes one process of a group:
each process trains on its own share of every global batch, gradients are averaged across the
group, and only rank 0 writes files. Without those variables nothing here changes anything:
:func:`session` yields a single-process context whose helpers are no-ops, so a plain run stays
exactly what it was.

Backend: ``nccl`` when the processes train on CUDA (each on ``cuda:LOCAL_RANK``), ``gloo`` on
the CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedSetupError(RuntimeError):
    """The distributed environment is incomplete or contradicts the requested device."""


@dataclass(frozen=True)
class DistributedContext:
    """Which process this is: ``rank`` of ``world_size`` (1 and 0 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and outputs."""
        return self.rank == 0

    # -- collectives; each is a no-op (or the identity) in a single process

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one (a stop request must end
        training at the same step everywhere, or the others wait forever in the next all-reduce)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item() > 0)

    def sum_ints(self, values: list[int]) -> list[int]:
        """Element-wise sum over ranks of a list of integers (e.g. object counts)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return [round(v) for v in tensor.tolist()]

    def mean_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of each value (the same keys on every rank, in any order). float64,
        so the mean of equal per-rank losses is that loss exactly."""
        if not self.enabled:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Sum over ranks of each value (float64)."""
        if not self.enabled:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return {k: float(v) for k, v in zip(keys, tensor.tolist())}

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` in DistributedDataParallel (the module itself in a single process). The
        wrapper shares the module's parameters: save and load the unwrapped module."""
        if not self.enabled:
            return module
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def context_from_env(environ: dict[str, str] | None = None) -> DistributedContext:
    """The context the environment describes; single-process when ``WORLD_SIZE`` is unset or 1.
    Does not join a group (see :func:`session`)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return DistributedContext()
    missing = [name for name in ENV_VARS if name not in env]
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedSetupError(
            f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got "
            f"{ {k: env.get(k) for k in ENV_VARS} }; launch with torchrun") from None
    if world_size <= 1:
        return DistributedContext()
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world_size} is set but {missing} are not; launch with "
            "torchrun --nproc_per_node N (it sets all three) or unset WORLD_SIZE")
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} is outside 0..{world_size - 1}")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def process_device(ctx: DistributedContext, device: torch.device) -> torch.device:
    """The device this process trains on: on CUDA each process takes ``cuda:LOCAL_RANK``."""
    if not ctx.enabled or device.type != "cuda":
        return device
    if device.index is not None and device.index != ctx.local_rank:
        raise DistributedSetupError(
            f"device {device} was requested, but under torchrun process {ctx.rank} trains on "
            f"cuda:{ctx.local_rank} (LOCAL_RANK); pass --device cuda or auto")
    if ctx.local_rank >= torch.cuda.device_count():
        raise DistributedSetupError(
            f"LOCAL_RANK={ctx.local_rank} but only {torch.cuda.device_count()} GPU(s) are "
            "visible; use --nproc_per_node at most the GPU count")
    return torch.device("cuda", ctx.local_rank)


@contextlib.contextmanager
def session(device: torch.device, environ: dict[str, str] | None = None
            ) -> Iterator[tuple[DistributedContext, torch.device]]:
    """Join the process group the environment describes, yield (context, this process's device)
    and leave the group at the end. A group that already exists (the caller made it) is used
    and left for the caller to destroy: a program that trains several times in one torchrun
    launch must make the group once around them (``with session(device):``), because a group
    made again in the same process finds the first one's stale addresses in torchrun's store."""
    ctx = context_from_env(environ)
    if not ctx.enabled:
        yield ctx, device
        return
    if not torch.distributed.is_available():
        raise DistributedSetupError("this torch build has no torch.distributed; train in one process")
    device = process_device(ctx, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    created = not torch.distributed.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend, rank=ctx.rank,
                                             world_size=ctx.world_size)
    elif torch.distributed.get_world_size() != ctx.world_size:
        raise DistributedSetupError(
            f"a process group of {torch.distributed.get_world_size()} already exists but "
            f"WORLD_SIZE={ctx.world_size}")
    ctx = DistributedContext(ctx.rank, ctx.world_size, ctx.local_rank,
                             torch.distributed.get_backend())
    try:
        yield ctx, device
    finally:
        if created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group, differentiable: the gradient of every process's input is the
    sum of all processes' output gradients (each process's loss depends on every input)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class ProcessGroupBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the whole global batch, summed
    over the process group with a differentiable all-reduce; for the CPU, where
    ``nn.SyncBatchNorm`` refuses to run. Same parameters and buffers as ``nn.BatchNorm2d``, so
    checkpoints load into the plain network. In eval mode it is plain BatchNorm (no
    collectives: rank 0 validates alone)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not torch.distributed.is_initialized():
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        dims = [0, 2, 3]
        count = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype, device=input.device)
        total = all_reduce(torch.cat([input.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        # Two passes (sum, then squared deviations) as BatchNorm does, not E[x^2] - E[x]^2,
        # whose cancellation would cost digits the equivalence with one process needs.
        centred = input - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var.detach() * (n / torch.clamp(n - 1, min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1 - factor).add_(unbiased * factor)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``module`` computing global-batch statistics: ``nn.SyncBatchNorm``
    on CUDA, :class:`ProcessGroupBatchNorm` on the CPU. Call only in a distributed run."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = ProcessGroupBatchNorm(child.num_features, child.eps, child.momentum,
                                                child.affine, child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            replacement.to(device)
            setattr(module, name, replacement)
        else:
            synchronise_batchnorm(child, device)
    return module


def shard_slice(global_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) of ``rank``'s contiguous share of a global batch of ``global_size`` items: equal
    shares when it divides, otherwise the first ``global_size % world_size`` ranks get one more."""
    base, extra = divmod(global_size, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)
