"""Members in and out of a stack: the stacked tensors are the solo ones, and a member's state moves between a
stack and a solo run (checkpoints) without changing what it computes next."""

from __future__ import annotations

import random

import pytest
import torch

from bioscale.stack import Stack, build_member
from tests.stack.cases import ARCHS, FC, SGD, batches, max_dev, specs

pytestmark = pytest.mark.usefixtures("float64")

CASES = [("fc", "brsf", {}), ("fc", "dtp", {"sigma": 0.2}), ("lc", "kp", {}), ("conv", "aosdtp", {"aux_units": 5})]


@pytest.mark.parametrize(("arch", "rule"), [("fc", "fa"), ("fc", "dfa"), ("lc", "ss"), ("conv", "sdtp"),
                                            ("fc", "aosdtp")])
def test_stacked_tensors_are_the_solo_ones(arch: str, rule: str) -> None:
    """Stacking is exact (bitwise), every solo tensor is in the stack, and a member unstacks into a solo model."""
    all_specs = specs(rule, arch=arch)
    info = ARCHS[arch][1]
    stack = Stack.build(all_specs, info)
    for m, spec in enumerate(all_specs):
        solo = build_member(spec, info).model
        sd = stack.net.member_state_dict(m)
        assert sd.keys() == solo.state_dict().keys()
        for k, v in solo.state_dict().items():
            assert torch.equal(sd[k], v), k
        solo.load_state_dict(sd, strict=True)
    assert len({float(stack.net.member_state_dict(m)["layers.0.op.weight"].sum()) for m in range(4)}) == 4


def _solo_steps(model: object, rule: object, data: list, m: int, steps: range) -> None:
    for s in steps:
        x, y = data[s]
        rule.train_step(x[m], y[m])  # type: ignore[attr-defined]


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])


@pytest.mark.parametrize(("arch", "rule", "params"), CASES)
def test_member_state_resumes_solo(arch: str, rule: str, params: dict) -> None:
    """A member's state taken mid-run (``member_state``: what its checkpoint would hold) resumes as a solo
    job that then computes what the stack computes: weights, optimiser state and random stream."""
    all_specs = specs(rule, arch=arch, params=params, inverse=SGD if rule in ("dtp", "aosdtp") else None)
    info = ARCHS[arch][1]
    data = batches(info, 4)
    stack = Stack.build(all_specs, info)
    stack.begin_epoch(0)
    for x, y in data[:2]:
        stack.step(x, y)
    saved = [stack.member_state(m) for m in range(4)]
    for x, y in data[2:]:
        stack.step(x, y)
    for m, spec in enumerate(all_specs):
        member = build_member(spec, info)
        member.model.load_state_dict(saved[m]["model"])
        member.rule.load_state_dict(saved[m]["rule"])
        member.rule.begin_epoch(0)
        _restore_rng(saved[m])
        _solo_steps(member.model, member.rule, data, m, range(2, 4))
        dev = max(max_dev(stack.net.member_state_dict(m), member.model.state_dict()),
                  max_dev(stack.member(m)[1].state_dict(), member.rule.state_dict()))
        assert dev < 1e-6, f"member {m}: {dev}"


@pytest.mark.parametrize(("arch", "rule", "params"), CASES)
def test_solo_state_resumes_in_a_stack(arch: str, rule: str, params: dict) -> None:
    """The other way: solo jobs checkpointed after 2 steps, loaded into a fresh stack (``load_member_state``),
    continue inside it exactly as they continue alone."""
    all_specs = specs(rule, arch=arch, params=params)
    info = ARCHS[arch][1]
    data = batches(info, 4)
    saved, finals = [], []
    for m, spec in enumerate(all_specs):
        member = build_member(spec, info)
        member.rule.begin_epoch(0)
        _solo_steps(member.model, member.rule, data, m, range(2))
        saved.append({"model": {k: v.clone() for k, v in member.model.state_dict().items()},
                      "rule": _clone(member.rule.state_dict()), "torch_rng": torch.get_rng_state(),
                      "cuda_rng": [], "python_rng": random.getstate()})
        _solo_steps(member.model, member.rule, data, m, range(2, 4))
        finals.append((member.model.state_dict(), member.rule.state_dict()))
    stack = Stack.build(all_specs, info)
    for m in range(4):
        stack.load_member_state(m, saved[m])
    stack.begin_epoch(0)
    for x, y in data[2:]:
        stack.step(x, y)
    for m in range(4):
        dev = max(max_dev(stack.net.member_state_dict(m), finals[m][0]),
                  max_dev(stack.member(m)[1].state_dict(), finals[m][1]))
        assert dev < 1e-6, f"member {m}: {dev}"


def _clone(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj.clone() if isinstance(obj, torch.Tensor) else obj


@pytest.mark.parametrize(("arch", "rule"), [("fc", "kp"), ("lc", "frsf"), ("fc", "dtp")])
def test_members_are_views_of_the_stack_and_their_states_copies_of_one_member(arch: str, rule: str) -> None:
    """The solo objects a stack keeps for checkpoints and diagnostics hold no second copy of the weights: their
    tensors are the stack's slices (so they follow its steps), their optimisers hold no state between uses,
    and a member's state is its own tensors only (``torch.save`` of a view would write every member's)."""
    info = ARCHS[arch][1]
    stack = Stack.build(specs(rule, arch=arch), info)
    stack.begin_epoch(0)
    for x, y in batches(info, 2):
        stack.step(x, y)
    stacked = stack.net.state_dict()
    for m, member in enumerate(stack.members):
        for k, t in member.model.state_dict().items():
            assert t.untyped_storage().data_ptr() == stacked[k].untyped_storage().data_ptr(), k
            assert torch.equal(t, stacked[k][m]), k
    state = stack.member_state(1)
    tensors = [t for t in _leaves(state) if isinstance(t, torch.Tensor)]
    assert any(t.dim() > 1 for t in tensors)  # weights and the optimiser's moments are in it
    for t in tensors:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # its own storage, nothing more
    assert all(not opt.state for mem in stack.members for opt in mem.rule.optimizers.values())
    _, rule_1 = stack.member(1)
    assert any(opt.state for opt in rule_1.optimizers.values())  # the member being read: its state, loaded
    stack.member(2)
    assert all(not opt.state for opt in rule_1.optimizers.values())  # ... and dropped when another is read


def _leaves(obj: object) -> list[object]:
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in _leaves(v)]
    if isinstance(obj, list | tuple):
        return [leaf for v in obj for leaf in _leaves(v)]
    return [obj]


@pytest.mark.parametrize(("arch", "rule"), [("fc", "dtp"), ("conv", "fa"), ("lc", "bp")])
def test_a_diverging_member_leaves_the_others_exact(arch: str, rule: str) -> None:
    """Member 2 blows up (lr 1e200: its weights overflow to inf/nan); the other members still follow their
    solo runs, so the trainer can drop one member and keep the rest."""
    optim = [dict(o) for o in SGD]
    optim[2]["lr"] = 1e200
    all_specs = specs(rule, arch=arch, optim=optim)
    info = ARCHS[arch][1]
    data = batches(info, 4)
    stack = Stack.build(all_specs, info)
    stack.begin_epoch(0)
    for x, y in data:
        loss = stack.step(x, y).loss
    assert not torch.isfinite(loss[2]) or not torch.isfinite(stack.net.member_state_dict(2)["layers.0.op.weight"]).all()
    for m in (0, 1, 3):
        assert torch.isfinite(loss[m])
        member = build_member(all_specs[m], info)
        member.rule.begin_epoch(0)
        _solo_steps(member.model, member.rule, data, m, range(4))
        assert max_dev(stack.net.member_state_dict(m), member.model.state_dict()) < 1e-6


def test_current_lr_per_member() -> None:
    optim = [{**o, "schedule": {"step_size": s, "gamma": 0.5}} for o, s in zip(SGD, [1, 2, 3, 1], strict=True)]
    all_specs = specs("bp", optim=optim)
    stack = Stack.build(all_specs, FC)
    for epoch in range(4):
        stack.begin_epoch(epoch)
        for m, spec in enumerate(all_specs):
            solo = build_member(spec, FC).rule
            solo.begin_epoch(epoch)
            assert stack.current_lr(m) == solo.current_lr()


@pytest.mark.parametrize(("arch", "rule", "params"), CASES)
def test_subset_carries_on(arch: str, rule: str, params: dict) -> None:
    """Dropping members mid-run: the kept ones continue exactly as they would in the full stack."""
    all_specs = specs(rule, arch=arch, params=params)
    info = ARCHS[arch][1]
    data = batches(info, 4)
    full = Stack.build(all_specs, info)
    full.begin_epoch(0)
    for x, y in data[:2]:
        full.step(x, y)
    keep = [3, 0, 2]
    part = full.subset(keep)
    for x, y in data[2:]:
        full.step(x, y)
        part.step(x[keep], y[keep])
    for j, m in enumerate(keep):
        assert max_dev(part.net.member_state_dict(j), full.net.member_state_dict(m)) < 1e-12
        assert max_dev(part.member(j)[1].state_dict(), full.member(m)[1].state_dict()) < 1e-12
