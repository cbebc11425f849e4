"""Optimisers from an ``OptimSpec``: Adam or SGD, Batch Manhattan, step lr decay."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from bioscale.spec import OptimSpec


def build_optimizer(param_groups: Iterable[dict[str, Any]], spec: OptimSpec) -> Optimizer:
    groups = [dict(g) for g in param_groups]
    for g in groups:
        g.setdefault("lr", spec.lr)
        g["initial_lr"] = g["lr"]
    if spec.name == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                weight_decay=spec.weight_decay)
    return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                           nesterov=spec.nesterov)


def set_epoch_lr(optimizer: Optimizer, spec: OptimSpec, epoch: int) -> None:
    """Set each group's lr for ``epoch`` (0-based) from its initial lr; stateless, so resume is exact."""
    factor = 1.0
    if spec.schedule is not None:
        factor = spec.schedule.gamma ** (epoch // spec.schedule.step_size)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor


def batch_manhattan_(optimizer: Optimizer) -> None:
    """Replace every gradient by its sign, before the optimiser applies weight decay and momentum.

    This is Xiao et al.'s ``--bm`` (``d_p = p.grad.data.sign_()``), after Liao et al. 2016.
    """
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        torch._foreach_sign_(grads)
