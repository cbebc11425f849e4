"""``StackedOptimizer`` against torch's own optimisers (``bioscale.optim.build_optimizer``), member by member:
per-member lr/betas/eps/weight decay/momentum/schedule, two param groups, a parameter that misses a step."""

from __future__ import annotations

import pytest
import torch

from bioscale.optim import build_optimizer, set_epoch_lr
from bioscale.spec import OptimSpec
from bioscale.stack.optim import StackedGroup, StackedOptimizer

pytestmark = pytest.mark.usefixtures("float64")

SPECS = {
    "adam": [OptimSpec(lr=1e-2, schedule={"step_size": 1, "gamma": 0.5}, last_layer_lr=0.05),
             OptimSpec(lr=3e-3, betas=(0.7, 0.95), eps=1e-5, weight_decay=0.1, last_layer_lr=0.02, impl="loop"),
             OptimSpec(lr=2e-2, weight_decay=1e-3, schedule={"step_size": 2, "gamma": 0.1}, last_layer_lr=1e-3)],
    "sgd": [OptimSpec(name="sgd", lr=0.1, last_layer_lr=0.2),
            OptimSpec(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.01, last_layer_lr=0.3,
                      schedule={"step_size": 1, "gamma": 0.3}),
            OptimSpec(name="sgd", lr=0.2, momentum=0.5, last_layer_lr=0.01)],
    "nesterov": [OptimSpec(name="sgd", lr=0.1, momentum=0.9, nesterov=True, last_layer_lr=0.2),
                 OptimSpec(name="sgd", lr=0.05, momentum=0.5, nesterov=True, weight_decay=0.1, last_layer_lr=0.3),
                 OptimSpec(name="sgd", lr=0.2, momentum=0.1, nesterov=True, last_layer_lr=0.01)],
}
SHAPES = [(4, 3), (5,), (2, 2, 3)]


PATHS = {"fused per member": (("cuda",), ("cpu",)), "flat": (("cpu", "cuda"), ("cpu",)),
         "per parameter": (("cuda",), ())}
"""(flat_on, fused_on): the CPU's step (Adam fused member by member, SGD per parameter), a GPU's flat step and
the per-parameter formula, each declared for the CPU here."""


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", list(SPECS))
def test_matches_torch_per_member(kind: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StackedOptimizer, "flat_on", PATHS[path][0])
    monkeypatch.setattr(StackedOptimizer, "fused_on", PATHS[path][1])
    specs = SPECS[kind]
    m = len(specs)
    g = torch.Generator().manual_seed(0)
    stacked = [torch.randn(m, *s, generator=g) for s in SHAPES]
    solo = [[t[i].clone().requires_grad_() for t in stacked] for i in range(m)]
    torch_opts = [build_optimizer([{"params": ps[:2]}, {"params": ps[2:], "lr": sp.last_layer_lr}], sp)
                  for ps, sp in zip(solo, specs, strict=True)]
    groups = [StackedGroup(stacked[:2], [s.lr for s in specs], [s.lr for s in specs]),
              StackedGroup(stacked[2:], [s.last_layer_lr for s in specs], [s.last_layer_lr for s in specs])]
    opt = StackedOptimizer(groups, specs)
    for epoch in range(3):
        opt.set_epoch(epoch)
        for o, sp in zip(torch_opts, specs, strict=True):
            set_epoch_lr(o, sp, epoch)
        for step in range(3):
            grads = [torch.randn(m, *s, generator=g) for s in SHAPES]
            skip = 1 if (epoch, step) == (1, 1) else None  # parameter 1 gets no gradient this step
            for k, p in enumerate(stacked):
                p.grad = None if k == skip else grads[k]
            opt.step()
            for i, (o, ps) in enumerate(zip(torch_opts, solo, strict=True)):
                for k, p in enumerate(ps):
                    p.grad = None if k == skip else grads[k][i].clone()
                o.step()
    for i in range(m):
        for k, p in enumerate(stacked):
            assert torch.allclose(p[i], solo[i][k].detach(), atol=1e-12, rtol=0), (i, k)
    # state round trip in torch's format: the stacked member state loads into torch's optimiser and back
    for i, o in enumerate(torch_opts):
        mine = opt.member_state_dict(i, stacked)
        theirs = o.state_dict()
        assert mine["state"].keys() == theirs["state"].keys()
        for key, st in theirs["state"].items():
            for name, v in st.items():
                if v is not None:
                    assert torch.allclose(mine["state"][key][name].double(), v.double(), atol=1e-12), (i, key, name)
        assert [gr["lr"] for gr in mine["param_groups"]] == pytest.approx([gr["lr"] for gr in theirs["param_groups"]])
    other = StackedOptimizer([StackedGroup(stacked[:2], [1.0] * m, [1.0] * m),
                              StackedGroup(stacked[2:], [1.0] * m, [1.0] * m)], specs)
    for i, o in enumerate(torch_opts):
        other.load_member_state_dict(i, stacked, o.state_dict())
    for i in range(m):
        a, b = opt.member_state_dict(i, stacked), other.member_state_dict(i, stacked)
        assert a["param_groups"] == b["param_groups"]
        for key in a["state"]:
            for name in a["state"][key]:
                assert torch.allclose(a["state"][key][name], b["state"][key][name], atol=1e-12, rtol=0)
    again = StackedOptimizer(other.groups, specs)  # and exactly back from its own format
    for i in range(m):
        again.load_member_state_dict(i, stacked, other.member_state_dict(i, stacked))
        a, b = other.member_state_dict(i, stacked), again.member_state_dict(i, stacked)
        assert a["state"].keys() == b["state"].keys()
        for key in a["state"]:
            for name in a["state"][key]:
                assert torch.equal(a["state"][key][name], b["state"][key][name])


def test_members_must_share_the_optimiser() -> None:
    from bioscale.errors import BioscaleError

    p = torch.zeros(2, 3)
    with pytest.raises(BioscaleError, match="share"):
        StackedOptimizer([StackedGroup([p], [1.0, 1.0], [1.0, 1.0])], [OptimSpec(), OptimSpec(name="sgd")])


def test_a_member_at_the_default_fused_impl_gets_its_solo_update_bitwise() -> None:
    """On the CPU each member steps through torch's fused Adam kernel, so in float32 its parameters equal a
    solo ``impl: fused`` optimiser's exactly (the formula path agrees only to rounding)."""
    specs = [OptimSpec(lr=1e-2), OptimSpec(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)]
    g = torch.Generator().manual_seed(1)
    stacked = [torch.randn(2, *s, generator=g, dtype=torch.float32) for s in SHAPES]
    solo = [[t[i].clone().requires_grad_() for t in stacked] for i in range(2)]
    torch_opts = [build_optimizer([{"params": ps}], sp) for ps, sp in zip(solo, specs, strict=True)]
    opt = StackedOptimizer([StackedGroup(stacked, [s.lr for s in specs], [s.lr for s in specs])], specs)
    for _ in range(5):
        grads = [torch.randn(2, *s, generator=g, dtype=torch.float32) for s in SHAPES]
        for p, gr in zip(stacked, grads, strict=True):
            p.grad = gr
        opt.step()
        for i, (o, ps) in enumerate(zip(torch_opts, solo, strict=True)):
            for p, gr in zip(ps, grads, strict=True):
                p.grad = gr[i].clone()
            o.step()
    for i in range(2):
        for k, p in enumerate(stacked):
            assert torch.equal(p[i], solo[i][k].detach()), (i, k)
