"""One optimiser step for M stacked members, each with its own hyperparameters (Adam or SGD).

Hand-written because torch's optimisers take one scalar lr (betas, eps, weight decay, momentum) per param
group, and a stacked parameter [M, ...] holds M members' weights in one tensor: a per-member group on a slice
of it is impossible (groups hold whole tensors). So this applies torch's own update formulas
(``torch.optim.Adam``/``SGD``, non-fused, non-amsgrad, dampening 0: the same update the fused kernels
compute, rounded differently) with every hyperparameter a [M] vector broadcast over the member dimension, and
each member's step count kept apart. Per-member state converts to and from a solo optimiser's
``state_dict`` (``member_state_dict``/``load_member_state_dict``), so a member's checkpoint is the one its
solo job would write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bioscale.errors import BioscaleError
from bioscale.spec import OptimSpec


@dataclass
class StackedGroup:
    """Stacked parameters that share a per-member initial lr (a solo param group, for every member)."""

    params: list[Tensor]
    initial_lr: list[float]
    """Member m's lr at epoch 0 for this group: its ``optim.lr``, or ``last_layer_lr`` for the output layer."""
    lr: list[float]
    """Member m's current lr (``set_epoch``)."""


class StackedOptimizer:
    """Adam or SGD over stacked parameters (leading dim M), member m stepping as ``bioscale.optim``'s optimiser
    built from ``specs[m]`` would. All members must share ``name`` and ``nesterov`` (``bioscale.stack.stackable``)."""

    def __init__(self, groups: list[StackedGroup], specs: list[OptimSpec]) -> None:
        if len({(s.name, s.nesterov) for s in specs}) != 1:
            raise BioscaleError("stacked members must share the optimiser's name and nesterov flag; "
                                f"got {sorted({(s.name, s.nesterov) for s in specs})}.")
        self.specs = list(specs)
        self.m = len(specs)
        self.name = specs[0].name
        self.nesterov = specs[0].nesterov
        self.groups = groups
        self.state: dict[int, dict[str, Any]] = {}
        self.steps = [0] * self.m
        """Per member: optimiser steps taken (Adam's bias correction; torch keeps it per parameter, and every
        parameter of a solo optimiser steps together, so one count per member is the same)."""
        self._vec_cache: dict[tuple, Tensor] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """torch-like view (``{"params": [...]}``) for code that walks an optimiser's gradients."""
        return [{"params": g.params, "lr": g.lr} for g in self.groups]

    def params(self) -> list[Tensor]:
        return [p for g in self.groups for p in g.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def set_epoch(self, epoch: int) -> None:
        """Each member's lr for ``epoch`` (0-based) from its own schedule, as ``bioscale.optim.set_epoch_lr``."""
        for g in self.groups:
            for m, spec in enumerate(self.specs):
                factor = 1.0
                if spec.schedule is not None:
                    factor = spec.schedule.gamma ** (epoch // spec.schedule.step_size)
                g.lr[m] = g.initial_lr[m] * factor

    def _vec(self, values: list[float], like: Tensor) -> Tensor:
        """[M, 1, ...] tensor of per-member scalars, broadcasting over ``like`` (cached by value)."""
        key = (tuple(values), like.dim(), like.dtype, like.device)
        out = self._vec_cache.get(key)
        if out is None:
            out = torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *[1] * (like.dim() - 1))
            if len(self._vec_cache) > 256:
                self._vec_cache.clear()
            self._vec_cache[key] = out
        return out

    @torch.no_grad()
    def step(self) -> None:
        self.steps = [s + 1 for s in self.steps]
        for g in self.groups:
            for p in g.params:
                if p.grad is None:
                    continue
                if self.name == "adam":
                    self._adam(p, g.lr)
                else:
                    self._sgd(p, g.lr)

    def _adam(self, p: Tensor, lr: list[float]) -> None:
        """torch.optim.Adam's single-tensor update (``_single_tensor_adam``), per member."""
        grad = p.grad
        assert grad is not None
        wd = [s.weight_decay for s in self.specs]
        if any(wd):
            grad = grad.add(p * self._vec(wd, p))
        st = self.state.setdefault(id(p), {})
        if not st:
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1 = [s.betas[0] for s in self.specs]
        beta2 = [s.betas[1] for s in self.specs]
        st["exp_avg"].lerp_(grad, self._vec([1 - b for b in beta1], p))
        st["exp_avg_sq"].mul_(self._vec(beta2, p)).add_(self._vec([1 - b for b in beta2], p) * grad * grad)
        step_size = [lr[m] / (1 - beta1[m] ** self.steps[m]) for m in range(self.m)]
        bc2_sqrt = [(1 - beta2[m] ** self.steps[m]) ** 0.5 for m in range(self.m)]
        denom = (st["exp_avg_sq"].sqrt() / self._vec(bc2_sqrt, p)).add_(self._vec([s.eps for s in self.specs], p))
        p.sub_(self._vec(step_size, p) * st["exp_avg"] / denom)

    def _sgd(self, p: Tensor, lr: list[float]) -> None:
        """torch.optim.SGD's single-tensor update (dampening 0), per member. A member with momentum 0 keeps a
        buffer equal to its gradient, which steps exactly as torch's buffer-free path."""
        grad = p.grad
        assert grad is not None
        wd = [s.weight_decay for s in self.specs]
        if any(wd):
            grad = grad.add(p * self._vec(wd, p))
        momentum = [s.momentum for s in self.specs]
        if any(momentum):
            st = self.state.setdefault(id(p), {})
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = st["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(self._vec(momentum, p)).add_(grad)
            grad = grad.add(buf * self._vec(momentum, p)) if self.nesterov else buf
        p.sub_(self._vec(lr, p) * grad)

    # -- per-member state, in a solo optimiser's format ------------------------------------------------

    def member_state_dict(self, m: int, order: list[Tensor]) -> dict[str, Any]:
        """Member m's state as ``torch.optim`` writes it for a solo optimiser whose parameters, in its order,
        are the members' slices of the stacked tensors ``order`` (one group per stacked group)."""
        index = {id(p): i for i, p in enumerate(order)}
        state: dict[int, dict[str, Any]] = {}
        for p in order:
            st = self.state.get(id(p))
            if self.name == "adam":
                if st is None:
                    continue
                state[index[id(p)]] = {"step": torch.tensor(float(self.steps[m])),
                                       "exp_avg": st["exp_avg"][m].clone(), "exp_avg_sq": st["exp_avg_sq"][m].clone()}
            elif st is not None and "momentum_buffer" in st and self.specs[m].momentum:
                state[index[id(p)]] = {"momentum_buffer": st["momentum_buffer"][m].clone()}
        groups = []
        for g in self.groups:
            groups.append({"params": [index[id(p)] for p in g.params], "lr": g.lr[m], "initial_lr": g.initial_lr[m]})
        return {"state": state, "param_groups": groups}

    def load_member_state_dict(self, m: int, order: list[Tensor], sd: dict[str, Any]) -> None:
        """The inverse of ``member_state_dict``: put a solo optimiser's state (same parameter order) into member m."""
        if len(sd["param_groups"]) != len(self.groups):
            raise BioscaleError(f"a solo optimiser state with {len(sd['param_groups'])} param groups does not fit "
                                f"this stack's {len(self.groups)}.")
        for g, sg in zip(self.groups, sd["param_groups"], strict=True):
            g.lr[m] = float(sg["lr"])
            g.initial_lr[m] = float(sg.get("initial_lr", sg["lr"]))
        steps = set()
        with torch.no_grad():
            for i, p in enumerate(order):
                saved = sd["state"].get(i, sd["state"].get(str(i)))
                if saved is None:
                    continue
                st = self.state.setdefault(id(p), {})
                for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                    if key in saved:
                        if key not in st:
                            st[key] = torch.zeros_like(p)
                        st[key][m].copy_(saved[key])
                if "step" in saved:
                    steps.add(int(float(saved["step"])))
        if len(steps) > 1:
            raise BioscaleError(f"a solo optimiser state whose parameters are at different steps {sorted(steps)} "
                                "cannot be stacked.")
        if steps:
            self.steps[m] = steps.pop()
