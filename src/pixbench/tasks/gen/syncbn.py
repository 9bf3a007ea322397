"""Batch norm over the global batch under data parallelism, on CPU (gloo) as on GPU.

A rank sees only its shard of each batch, so plain BatchNorm would normalise with shard
statistics and a 2-rank run would train another model than one process does. torch's
SyncBatchNorm fixes that on GPUs only (it refuses CPU tensors), so the FID classifier and the
VQGAN discriminator use this instead: per-channel sums go through an all_reduce whose backward
all-reduces the gradients, which makes the gradient that of the global batch, as
SyncBatchNorm's does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pixbench import distributed


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x. Every rank's loss depends on y, so the gradient reaching rank
    q's x is the sum over ranks of dL_r/dy: the backward is the same all_reduce. (Public
    collectives only: torch.distributed.nn.functional.all_reduce, which does this, is
    deprecated.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g)
        return g


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with global-batch statistics in training mode; same parameters, buffers
    and state_dict keys, so its checkpoints load into a plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = x.new_tensor([x.numel() // c])  # (1,) this rank's values per channel
        total = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))  # (C + 1,)
        n = total[c]
        mean = total[:c] / n  # (C,)
        centred = x - mean[None, :, None, None]  # (N, C, H, W)
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / n  # (C,) biased, for normalising
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / (n - 1))  # unbiased, as torch
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(var, alpha=m)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm2d of `module` a GlobalBatchNorm2d when there are several ranks.

    The class is swapped in place: the subclass adds no state, so parameters (and optimisers
    built on them), buffers and state_dict keys stay as they are. One process keeps plain
    BatchNorm2d, so single-process results do not change."""
    if distributed.world_size() > 1:
        for m in module.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = GlobalBatchNorm2d
    return module
