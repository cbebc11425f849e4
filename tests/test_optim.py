"""``OptimSpec.impl``: fused, foreach and loop compute the same update (rounded differently), the default is
fused, a resumed optimiser steps as its spec says, and the choice never moves a job id."""

from __future__ import annotations

import pytest
import torch

from bioscale.optim import build_optimizer, impl_flags, use_impl
from bioscale.spec import JobSpec, OptimSpec

SHAPES = [(32, 20), (32,), (5, 4, 3, 3), (7,)]
STEPS = 100
# Largest |parameter difference| from ``loop`` after 100 steps at lr 1e-2 (measured: float64 ~1e-16,
# float32 ~1e-7 with parameters of size ~1): a few ulps per step, never a different update.
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}
SPECS = [dict(name="adam", lr=1e-2), dict(name="adam", lr=1e-2, weight_decay=1e-3, betas=(0.8, 0.99)),
         dict(name="sgd", lr=1e-2), dict(name="sgd", lr=1e-2, momentum=0.9, weight_decay=1e-4),
         dict(name="sgd", lr=1e-2, momentum=0.9, nesterov=True)]


def _run(impl: str, kwargs: dict, dtype: torch.dtype, steps: int = STEPS) -> tuple[list, torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    opt = build_optimizer([{"params": params[:2]}, {"params": params[2:], "lr": kwargs["lr"] / 3}],
                          OptimSpec(impl=impl, **kwargs))
    _steps(params, opt, range(steps))
    return params, opt


def _steps(params: list, opt: torch.optim.Optimizer, which: range) -> None:
    for i in which:
        g = torch.Generator().manual_seed(1000 + i)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * (1 + i % 3)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kwargs", SPECS, ids=lambda k: "-".join(f"{v}" for v in k.values()))
@pytest.mark.parametrize("impl", ["fused", "foreach", "torch"])
def test_every_impl_follows_the_loop(impl: str, kwargs: dict, dtype: torch.dtype) -> None:
    ref, _ = _run("loop", kwargs, dtype)
    got, opt = _run(impl, kwargs, dtype)
    start = _run("loop", kwargs, dtype, steps=0)[0]
    assert all(g["fused"] is (True if impl == "fused" else None) for g in opt.param_groups)
    for p, q, p0 in zip(got, ref, start, strict=True):
        assert float((q - p0).detach().abs().max()) > 1e-2  # the parameters moved: the comparison means something
        assert torch.allclose(p, q, rtol=0, atol=TOL[dtype]), float((p - q).abs().max())


def test_fused_is_the_default_and_loop_is_the_id_baseline() -> None:
    assert OptimSpec().impl == "fused"
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert impl_flags("fused", params) == {"fused": True, "foreach": None}
    assert impl_flags("loop", params) == {"fused": None, "foreach": False}
    assert impl_flags("torch", params) == {"fused": None, "foreach": None}  # what bioscale did before
    assert impl_flags("fused", [torch.zeros(3, dtype=torch.long)]) == {"fused": None, "foreach": True}


def test_the_impl_is_not_part_of_the_job_id() -> None:
    base = {"dataset": "synthetic", "arch": "fc", "rule": "dtp"}
    ids = {JobSpec.model_validate({**base, "optim": {"impl": i}, "inverse_optim": {"impl": j, "lr": 0.1}}).job_id()
           for i in ("fused", "foreach", "loop", "torch") for j in ("fused", "loop")}
    assert len(ids) == 1
    assert JobSpec.model_validate({**base, "optim": {"lr": 0.5}}).job_id() != JobSpec.model_validate(base).job_id()


@pytest.mark.parametrize(("saved", "resumed"), [("loop", "fused"), ("fused", "loop"), ("torch", "fused")])
def test_a_resumed_optimiser_steps_as_its_spec_says(saved: str, resumed: str) -> None:
    """``load_state_dict`` takes the checkpoint's fused/foreach flags; ``use_impl`` puts the spec's back, and
    the resumed run continues where the uninterrupted one goes (within the rounding tolerance)."""
    kwargs = dict(name="adam", lr=1e-2)
    ref, _ = _run(resumed, kwargs, torch.float32, steps=20)
    params, first = _run(saved, kwargs, torch.float32, steps=10)
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = build_optimizer([{"params": fresh[:2]}, {"params": fresh[2:], "lr": kwargs["lr"] / 3}],
                          OptimSpec(impl=resumed, **kwargs))
    opt.load_state_dict(first.state_dict())
    use_impl(opt, resumed)
    assert all(g["fused"] is (True if resumed == "fused" else None) for g in opt.param_groups)
    _steps(fresh, opt, range(10, 20))
    for p, q in zip(fresh, ref, strict=True):
        assert torch.allclose(p, q, rtol=0, atol=TOL[torch.float32])


def test_rules_build_both_target_optimisers_with_the_spec_impl() -> None:
    from bioscale.data.base import DataShape
    from bioscale.models import build_model
    from bioscale.rules import build_rule
    from bioscale.spec import ArchSpec

    spec = JobSpec.model_validate({"dataset": "synthetic", "arch": {"name": "fc", "params": {"hidden": [8, 8]}},
                                   "rule": "dtp", "optim": {"impl": "fused"},
                                   "inverse_optim": {"impl": "foreach", "lr": 0.1}})
    rule = build_rule(spec)
    info = DataShape("mnist", (1, 4, 4), 3, 10, 10)
    rule.prepare(build_model(ArchSpec.model_validate({"name": "fc", "params": {"hidden": [8, 8]}}), info))
    rule.setup(torch.device("cpu"), False)
    assert all(g["fused"] for g in rule.optimizers["model"].param_groups)
    assert all(g["foreach"] and not g["fused"] for g in rule.optimizers["inverse"].param_groups)
    rule.load_state_dict(rule.state_dict())
    assert all(g["foreach"] and not g["fused"] for g in rule.optimizers["inverse"].param_groups)
