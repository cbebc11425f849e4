"""Optimisers from an ``OptimSpec``: Adam or SGD, Batch Manhattan, step and multistep lr decay, warm-up."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from bioscale.spec import OptimSpec

_steps = 0


def steps() -> int:
    """Optimiser steps taken in this process by optimisers from ``build_optimizer``. A fused step updates the
    parameters in place without bumping their version counters (torch 2.14's ``_fused_adam_``/``_fused_sgd_``),
    so a cache keyed on a parameter's version alone (the sign workspaces of ``bioscale.layers.feedback``)
    would miss it; such caches key on this count too."""
    return _steps


def _count_step(*_: Any) -> None:
    global _steps
    _steps += 1


def build_optimizer(param_groups: Iterable[dict[str, Any]], spec: OptimSpec) -> Optimizer:
    groups = [dict(g) for g in param_groups]
    for g in groups:
        g.setdefault("lr", spec.lr)
        g["initial_lr"] = g["lr"]
    flags = impl_flags(spec.impl, [p for g in groups for p in g["params"]])
    if spec.name == "adam":
        opt: Optimizer = torch.optim.Adam(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps,
                                          weight_decay=spec.weight_decay, **flags)
    else:
        opt = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                              nesterov=spec.nesterov, **flags)
    opt.register_step_post_hook(_count_step)
    return opt


def impl_flags(impl: str, params: list[torch.Tensor]) -> dict[str, bool | None]:
    """torch's ``fused``/``foreach`` arguments for ``OptimSpec.impl``.

    ``fused`` falls back to ``foreach`` when a parameter sits on a device or has a dtype torch has no fused
    kernel for (it would refuse to build the optimiser); ``torch`` leaves both to torch (foreach on CUDA, the
    per-parameter loop on the CPU), which is what bioscale did before ``impl`` existed.
    """
    if impl == "fused":
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
        if all(p.device.type in devices and p.is_floating_point() and not p.is_sparse for p in params):
            return {"fused": True, "foreach": None}
        impl = "foreach"
    if impl == "foreach":
        return {"fused": None, "foreach": True}
    if impl == "loop":
        return {"fused": None, "foreach": False}
    return {"fused": None, "foreach": None}


def use_impl(optimizer: Optimizer, impl: str) -> None:
    """Put ``impl`` back after ``load_state_dict``, which takes the saved groups' ``fused``/``foreach``: a job
    resumed from a checkpoint of another implementation (one written before ``impl`` existed) steps as its
    spec says. A fused step keeps ``step`` as float32 on the parameter's device, the others as a CPU tensor."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    flags = impl_flags(impl, params)
    for g in optimizer.param_groups:
        g.update(flags)
    for p in params:
        step = optimizer.state.get(p, {}).get("step")
        if isinstance(step, torch.Tensor):
            optimizer.state[p]["step"] = (step.to(device=p.device, dtype=torch.float32) if flags["fused"]
                                          else step.to(device="cpu"))


def schedule_factor(spec: OptimSpec, epoch: int, step: int | None = None) -> float:
    """What multiplies the initial lr in ``epoch`` (0-based) and, with a warm-up, at the job's ``step``-th
    optimiser step (0-based): the schedule's decay times the linear warm-up's ramp."""
    factor = 1.0
    schedule = spec.schedule
    if schedule is not None:
        decays = bisect.bisect_right(schedule.milestones or [], epoch) if schedule.name == "multistep" else \
            epoch // schedule.step_size
        factor = schedule.gamma ** decays
    warmup = spec.warmup
    if warmup is not None and step is not None and step < warmup.steps:
        factor *= warmup.factor + (1.0 - warmup.factor) * step / warmup.steps
    return factor


def set_epoch_lr(optimizer: Optimizer, spec: OptimSpec, epoch: int, step: int | None = None) -> None:
    """Set each group's lr for ``epoch`` (0-based) and the job's ``step`` (a warm-up's ramp) from its initial
    lr; stateless, so resume is exact."""
    factor = schedule_factor(spec, epoch, step)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor


def batch_manhattan_(optimizer: Optimizer) -> None:
    """Replace every gradient by its sign, before the optimiser applies weight decay and momentum.

    This is Xiao et al.'s ``--bm`` (``d_p = p.grad.data.sign_()``), after Liao et al. 2016.
    """
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        torch._foreach_sign_(grads)
