"""Batch norm over the global batch of a distributed job (``train.distributed.sync_bn``).

By default each rank of a distributed job normalises its own part of the batch, as Xiao et al.'s
DataParallel code does on each GPU. ``GlobalBatchNorm`` instead combines every rank's per-channel count,
mean and sum of squared deviations (Chan et al.'s parallel formula, numerically stable), so N ranks normalise
exactly as one process does on the concatenated batch, and the backward pass carries the gradient through the
shared statistics to every rank. Unlike ``torch.nn.SyncBatchNorm`` (GPU-only) it runs on the CPU with gloo
as well as on GPUs with NCCL, so the path the tests check is the path GPUs run. Evaluation uses the running
statistics and communicates nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bioscale import distributed


class _WeightedAllReduce(torch.autograd.Function):
    """Sum over the ranks; the backward sends rank r (sum_s w_s g_s) / w_r, w the ranks' shares of the batch.

    The gradient sync later multiplies rank r's parameter gradients by w_r, so each rank's upstream gradient
    through the shared statistics enters the total with its own rank's weight: the exact gradient of the
    weighted mean loss, also when the global batch does not split evenly."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: float, group: distributed.Group) -> Tensor:
        ctx.weight, ctx.group = weight, group
        return group.all_reduce_(x.clone(), "combining batch-norm statistics")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        g = ctx.group.all_reduce_(grad * ctx.weight, "batch-norm gradients")
        return g / ctx.weight, None, None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm1d/2d/3d whose training statistics are those of the global batch (see the module docstring);
    outside a distributed job, and in evaluation, it is the ordinary layer."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D input")

    def forward(self, x: Tensor) -> Tensor:
        group = distributed.current()
        if not self.training or group is None or group.world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        n = x.numel() // c
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
        row = torch.cat([mean, var * n, mean.new_full((1,), float(n))])
        table = torch.zeros((group.world, row.numel()), dtype=row.dtype, device=row.device)
        table = table.index_copy(0, torch.tensor([group.rank], device=row.device), row[None])
        shard = distributed.step_shard()
        weight = shard.weight if shard is not None else 1.0 / group.world
        table = _WeightedAllReduce.apply(table, weight, group)
        means, m2s, counts = table[:, :c], table[:, c:2 * c], table[:, 2 * c:]
        total = counts.sum()
        mean_g = (counts * means).sum(0) / total
        m2_g = (m2s + counts * (means - mean_g) ** 2).sum(0)
        var_g = m2_g / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            self._update_running(mean_g.detach(), m2_g.detach() / (total.detach() - 1).clamp(min=1))
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - mean_g.view(shape)) * torch.rsqrt(var_g.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """As ``nn.BatchNorm``: exponential average with ``momentum`` (a cumulative one when it is None)."""
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
        self.running_var.mul_(1 - f).add_(unbiased_var.to(self.running_var.dtype), alpha=f)


def convert(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm1d/2d/3d replaced by a ``GlobalBatchNorm`` sharing its parameters and
    statistics (as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert(child))
    return out
