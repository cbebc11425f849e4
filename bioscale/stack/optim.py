"""One optimiser step for M stacked members, each with its own hyperparameters (Adam or SGD).

Hand-written because torch's optimisers take one scalar lr (betas, eps, weight decay, momentum) per param
group, and a stacked parameter [M, ...] holds M members' weights in one tensor: a per-member group on a slice
of it is impossible (groups hold whole tensors). Moments live in one [M, P] buffer per group (each
parameter's state a view), each member's step count kept apart, and a step takes one of three paths:
- flat (GPUs): torch's own update formulas (``torch.optim.Adam``/``SGD``, non-amsgrad, dampening 0: the
  update the fused kernels compute, rounded differently) on the whole group at once, gradients gathered into
  one [M, P] tensor and every hyperparameter an [M] vector: a dozen kernels per group whatever the number of
  parameters (a small net's step is launch-bound on a GPU);
- fused per member (Adam on the CPU): torch's fused Adam kernel on each member's slices, with its own
  hyperparameters: exactly a solo ``impl: fused`` job's update, in one pass over memory;
- per parameter (the rest: SGD, and a GPU group that cannot step flat): the formulas parameter by parameter,
  with no group-sized temporaries.
Per-member state converts to and from a solo optimiser's
``state_dict`` (``member_state_dict``/``load_member_state_dict``), so a member's checkpoint is the one its
solo job would write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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

    flat_on: ClassVar[tuple[str, ...]] = ("cuda",)
    """Device types where a group steps as one [M, P] flat tensor (a few kernels per group: a GPU step of a
    small net is bound by launches). Elsewhere each parameter steps on its own: the flat step's copies of the
    gradients and its temporaries are two parameter sizes of the whole group at once (1.5 GiB more for a
    stack of 2 CIFAR LC jobs), which a CPU pays for with nothing. Same formulas, elementwise: the same numbers;
    the tests add "cpu" to check the flat step too."""

    fused_on: ClassVar[tuple[str, ...]] = ("cpu",)
    """Device types where Adam, when not flat, steps member by member with torch's fused kernel
    (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` calls) on the members' slices: one pass over
    memory instead of the formula's ten (on the CPU it was most of a stacked CIFAR LC step), and a member at
    the default ``impl: fused`` gets exactly its solo job's update. Not on a GPU: its step counts would be M x
    P small host-to-device copies a step (a GPU steps flat; a group that cannot takes the formulas). The
    tests check the other paths too."""

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
        """Per stacked parameter: "step" (per member: steps taken, Adam's bias correction, as torch keeps it per
        parameter) and its moments, views of the group's [M, P] buffers (``_flat``)."""
        self._flat: dict[int, dict[str, Tensor]] = {}
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
        for g in self.groups:
            ps = [p for p in g.params if p.grad is not None]
            if not ps:
                continue
            self._ensure_state(g)
            states = [self.state[id(p)] for p in ps]
            device = ps[0].device.type
            if (device in self.flat_on and len(ps) == len(g.params) > 1
                    and all(st["step"] == states[0]["step"] for st in states)):
                self._flat_step(g, ps, states)
            elif self.name == "adam" and device in self.fused_on:
                self._fused_adam_step(g, ps, states)
            else:  # not a flat device, or a parameter skipped a step before: step each on its own count
                for p, st in zip(ps, states, strict=True):
                    st["step"] = [s + 1 for s in st["step"]]
                    p.sub_(self._delta(p.grad, p, st, st["step"], g.lr))

    def _flat_step(self, g: StackedGroup, ps: list[Tensor], states: list[dict[str, Any]]) -> None:
        """The whole group at once on [M, P] views (a few kernels per group instead of a few per parameter:
        a small net's step is bound by kernel launches on a GPU)."""
        steps = [s + 1 for s in states[0]["step"]]
        for st in states:
            st["step"] = list(steps)
        grad = torch.cat([p.grad.reshape(self.m, -1) for p in ps], dim=1)
        param = torch.cat([p.reshape(self.m, -1) for p in ps], dim=1) if self._decays() else None
        delta = self._delta(grad, param, self._flat[id(g)], steps, g.lr)
        sizes = [p[0].numel() for p in ps]
        torch._foreach_sub_(ps, [d.view_as(p) for d, p in zip(delta.split(sizes, dim=1), ps, strict=True)])

    def _fused_adam_step(self, g: StackedGroup, ps: list[Tensor], states: list[dict[str, Any]]) -> None:
        """Member by member, torch's fused Adam on the members' (contiguous) slices of parameters, gradients
        and moments, with that member's lr, betas, eps, weight decay and step counts (incremented first, as
        torch does)."""
        for st in states:
            st["step"] = [s + 1 for s in st["step"]]
        for m, spec in enumerate(self.specs):
            torch._fused_adam_(
                [p[m] for p in ps], [p.grad[m].contiguous() for p in ps], [st["exp_avg"][m] for st in states],
                [st["exp_avg_sq"][m] for st in states], [],
                [torch.tensor(float(st["step"][m]), dtype=torch.float32, device=ps[0].device) for st in states],
                lr=g.lr[m], beta1=spec.betas[0], beta2=spec.betas[1], weight_decay=spec.weight_decay,
                eps=spec.eps, amsgrad=False, maximize=False)

    def _decays(self) -> bool:
        return any(s.weight_decay for s in self.specs)

    def _ensure_state(self, g: StackedGroup) -> None:
        """Zero moments (torch's initial state; a zero SGD buffer times momentum plus the gradient is the
        gradient, torch's first buffer) in one [M, P] buffer per group, each parameter's state a view of it."""
        if id(g) in self._flat:
            return
        keys = ("exp_avg", "exp_avg_sq") if self.name == "adam" else (
            ("momentum_buffer",) if any(s.momentum for s in self.specs) else ())
        ref = g.params[0]
        total = sum(p[0].numel() for p in g.params)
        flat = {k: torch.zeros(self.m, total, dtype=ref.dtype, device=ref.device) for k in keys}
        self._flat[id(g)] = flat
        off = 0
        for p in g.params:
            n = p[0].numel()
            st = self.state.setdefault(id(p), {})
            st["step"] = [0] * self.m
            for k in keys:
                st[k] = flat[k][:, off:off + n].view(p.shape)
            off += n

    def _delta(self, grad: Tensor, param: Tensor | None, st: dict[str, Any], steps: list[int], lr: list[float]
               ) -> Tensor:
        """What the step subtracts from the parameter (torch's formulas, per member); updates ``st``'s moments."""
        if self._decays():
            assert param is not None
            grad = grad.add(param * self._vec([s.weight_decay for s in self.specs], grad))
        if self.name == "adam":
            beta1 = [s.betas[0] for s in self.specs]
            beta2 = [s.betas[1] for s in self.specs]
            exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
            exp_avg.lerp_(grad, self._vec([1 - b for b in beta1], grad))
            # in place on one temporary: each [M, P] pass costs a trip through memory on the CPU
            sq = torch.mul(grad, grad).mul_(self._vec([1 - b for b in beta2], grad))
            exp_avg_sq.mul_(self._vec(beta2, grad)).add_(sq)
            step_size = [lr[m] / (1 - beta1[m] ** steps[m]) for m in range(self.m)]
            bc2_sqrt = [(1 - beta2[m] ** steps[m]) ** 0.5 for m in range(self.m)]
            denom = torch.sqrt(exp_avg_sq, out=sq).div_(self._vec(bc2_sqrt, grad))
            denom.add_(self._vec([s.eps for s in self.specs], grad))
            return torch.div(exp_avg, denom, out=denom).mul_(self._vec(step_size, grad))
        momentum = [s.momentum for s in self.specs]
        if any(momentum):
            buf = st["momentum_buffer"]
            buf.mul_(self._vec(momentum, grad)).add_(grad)
            grad = grad.add(buf * self._vec(momentum, grad)) if self.nesterov else buf
        return self._vec(lr, grad) * grad

    # -- per-member state, in a solo optimiser's format ------------------------------------------------

    def member_state_dict(self, m: int, order: list[Tensor]) -> dict[str, Any]:
        """Member m's state as ``torch.optim`` writes it for a solo optimiser whose parameters, in its order,
        are the members' slices of the stacked tensors ``order`` (one group per stacked group)."""
        index = {id(p): i for i, p in enumerate(order)}
        state: dict[int, dict[str, Any]] = {}
        for p in order:
            st = self.state.get(id(p))
            if st is None or st["step"][m] == 0:  # torch has no state for a parameter that never stepped
                continue
            if self.name == "adam":
                state[index[id(p)]] = {"step": torch.tensor(float(st["step"][m])),
                                       "exp_avg": st["exp_avg"][m].clone(), "exp_avg_sq": st["exp_avg_sq"][m].clone()}
            elif "momentum_buffer" in st and self.specs[m].momentum:
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
        for g in self.groups:
            self._ensure_state(g)
        with torch.no_grad():
            for i, p in enumerate(order):
                saved = sd["state"].get(i, sd["state"].get(str(i)))
                st = self.state[id(p)]
                for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                    if key in st:
                        if saved is not None and saved.get(key) is not None:
                            st[key][m].copy_(saved[key])
                        else:
                            st[key][m].zero_()
                if saved is None:
                    st["step"][m] = 0
                elif "step" in saved:
                    st["step"][m] = int(float(saved["step"]))
                else:  # SGD keeps no count: any positive one marks "has stepped" (a buffer exists)
                    st["step"][m] = max(st["step"][m], 1)
