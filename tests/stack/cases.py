"""Shared by the stack tests: small jobs of M = 4 members (different seeds, lrs and rule numbers), their
batches, and the solo-vs-stack comparison. The solo reference is the existing rule code: each member is built
with ``build_member`` (what the trainer builds for its job) and stepped with ``rule.train_step`` on its own
batches, one member after the other, as separate jobs would."""

from __future__ import annotations

import torch

from bioscale.data.base import DataShape
from bioscale.spec import JobSpec
from bioscale.stack import Stack, build_member

M = 4
B = 5
TOL = 1e-6
FC = DataShape("mnist", (1, 3, 4), 3, 64, 64)
IMG = DataShape("mnist", (2, 6, 6), 3, 64, 64)
ARCHS = {
    "fc": ({"hidden": [7, 5]}, FC),
    "lc": ({"layers": [[3, 3, 2], [3, 4, 1]], "hidden": [6]}, IMG),
    "conv": ({"layers": [[3, 3, 2], [3, 4, 1]], "hidden": [6]}, IMG),
}
SEEDS = [0, 1, 2, 3]
ADAM = [{"lr": 1e-2}, {"lr": 3e-3, "betas": (0.8, 0.99)}, {"lr": 2e-2, "eps": 1e-6, "weight_decay": 1e-3},
        {"lr": 5e-3}]
SGD = [{"name": "sgd", "lr": 0.1}, {"name": "sgd", "lr": 0.05, "momentum": 0.9},
       {"name": "sgd", "lr": 0.2, "momentum": 0.5, "weight_decay": 1e-2}, {"name": "sgd", "lr": 0.02, "momentum": 0.9}]
PER_MEMBER_PARAMS = {
    "sigma": [0.1, 0.2, 0.0, 0.05],
    "alpha": [0.1, 0.2, 0.05, 0.3],
    "decay": [1e-2, 1e-3, 0.0, 5e-2],
}


def specs(rule: str, arch: str = "fc", params: dict | None = None, optim: list[dict] = ADAM,
          inverse: list[dict] | None = None, per_member: tuple[str, ...] = ()) -> list[JobSpec]:
    out = []
    for m in range(M):
        p = dict(params or {})
        for name in per_member:
            p[name] = PER_MEMBER_PARAMS[name][m]
        out.append(JobSpec.model_validate({
            "dataset": {"name": "synthetic"}, "arch": {"name": arch, "params": ARCHS[arch][0]},
            "rule": {"name": rule, "params": p}, "optim": optim[m],
            "inverse_optim": inverse[m] if inverse else None, "seed": SEEDS[m],
            "train": {"batch_size": B, "device": "cpu"}}))
    return out


def batches(info: DataShape, steps: int, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step: x [M, B, ...], y [M, B] (member m's own batch in row m)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(M, B, *info.input_shape, generator=g), torch.randint(0, info.num_classes, (M, B), generator=g))
            for _ in range(steps)]


def schedule(epochs: int, steps: int, phases: list[str]) -> list[tuple[int, str, int]]:
    return [(e, ph, s) for e in range(epochs) for ph in phases for s in range(steps)]


def run_solo(spec: JobSpec, m: int, info: DataShape, data: list, plan: list) -> tuple[dict, dict, list[float]]:
    member = build_member(spec, info)
    rule, losses = member.rule, []
    epoch = None
    for e, phase, s in plan:
        if e != epoch:
            rule.begin_epoch(e)
            epoch = e
        rule.begin_phase(phase)
        x, y = data[s]
        losses.append(float(rule.train_step(x[m], y[m]).loss))
    return member.model.state_dict(), rule.state_dict(), losses


def run_stack(all_specs: list[JobSpec], info: DataShape, data: list, plan: list) -> tuple[Stack, list]:
    stack = Stack.build(all_specs, info)
    losses, epoch = [], None
    for e, phase, s in plan:
        if e != epoch:
            stack.begin_epoch(e)
            epoch = e
        stack.begin_phase(phase)
        losses.append(stack.step(*data[s]).loss.tolist())
    return stack, losses


def max_dev(a: object, b: object) -> float:
    """Largest |a - b| over nested dicts/lists of tensors and numbers (keys must match)."""
    if isinstance(a, dict):
        assert set(a) == set(b), (sorted(a), sorted(b))
        return max([max_dev(a[k], b[k]) for k in a if k not in ("fused", "foreach")] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([max_dev(u, v) for u, v in zip(a, b, strict=True)] or [0.0])
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape, (a.shape, b.shape)
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, float | int) and not isinstance(a, bool):
        return abs(float(a) - float(b))
    assert a == b, (a, b)
    return 0.0


def check(all_specs: list[JobSpec], info: DataShape, epochs: int = 1, steps: int = 3) -> float:
    phases = Stack.build(all_specs[:1], info).phases(0)
    plan = schedule(epochs, steps, phases)
    data = batches(info, steps)
    stack, stack_losses = run_stack(all_specs, info, data, plan)
    worst = 0.0
    for m, spec in enumerate(all_specs):
        model_sd, rule_sd, losses = run_solo(spec, m, info, data, plan)
        assert stack.net.member_state_dict(m).keys() == model_sd.keys()
        dev = max(max_dev(stack.net.member_state_dict(m), model_sd),
                  max_dev(stack.member(m)[1].state_dict(), rule_sd),
                  max_dev([row[m] for row in stack_losses], losses))
        assert dev < TOL, f"member {m} deviates by {dev}"
        worst = max(worst, dev)
        for k, v in model_sd.items():  # the members really moved (a no-op stack would match a no-op solo)
            if v.is_floating_point() and "weight" in k and k.startswith("layers.0"):
                assert not torch.equal(v, build_member(spec, info).model.state_dict()[k])
    return worst
