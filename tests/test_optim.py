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


# ---- lr schedules and warm-up (torch's own schedulers are the reference) ------------------------------------


def _torch_lrs(make_scheduler, n: int, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(("schedule", "reference"), [
    ({"name": "step", "step_size": 3, "gamma": 0.5}, lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    ({"name": "multistep", "milestones": [4, 7], "gamma": 0.1},
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [4, 7], 0.1)),
])
def test_epoch_schedules_follow_torch(schedule: dict, reference) -> None:
    from bioscale.optim import schedule_factor

    spec = OptimSpec(lr=0.1, schedule=schedule)
    ours = [0.1 * schedule_factor(spec, epoch) for epoch in range(10)]
    assert ours == pytest.approx(_torch_lrs(reference, 10), rel=1e-12)


def test_warmup_follows_torchvisions_linear_ramp() -> None:
    """torchvision's detection reference: ``LinearLR(start_factor=warmup_factor, total_iters=warmup_iters)``
    stepped every iteration; combined with the epoch's decay."""
    from bioscale.optim import schedule_factor

    spec = OptimSpec(lr=0.1, warmup={"steps": 6, "factor": 0.001},
                     schedule={"name": "multistep", "milestones": [1], "gamma": 0.5})
    ramp = _torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.001, total_iters=6), 9)
    ours = [0.1 * schedule_factor(spec, 0, step) for step in range(9)]
    assert ours == pytest.approx(ramp, rel=1e-12)
    assert ours[0] == pytest.approx(1e-4) and ours[6:] == [0.1] * 3
    assert schedule_factor(spec, 1, 3) == pytest.approx(0.5 * ramp[3] / 0.1)  # a ramp that crosses an epoch
    assert schedule_factor(spec, 0, None) == 1.0  # begin_epoch: the decay only


@pytest.mark.parametrize(("optim", "message"), [
    ({"schedule": {"name": "multistep"}}, "a multistep schedule needs milestones"),
    ({"schedule": {"name": "multistep", "milestones": [5, 5]}}, "milestones must increase"),
    ({"schedule": {"name": "step", "milestones": [5]}}, "milestones belong to a multistep schedule"),
    ({"warmup": {"steps": 10, "factor": 0}}, "factor"),
])
def test_bad_schedules_are_refused_saying_what_to_write(optim: dict, message: str) -> None:
    from bioscale.errors import BioscaleError
    from bioscale.grid import resolve

    with pytest.raises(BioscaleError, match=message):
        resolve({"dataset": "synthetic", "arch": "fc", "rule": "bp", "optim": optim})


def test_schedule_fields_keep_old_job_ids() -> None:
    old = JobSpec(dataset="synthetic", arch="fc", rule="bp", optim={"schedule": {"step_size": 10}})
    assert old.job_id() == JobSpec.model_validate(old.model_dump(exclude={"optim": {"warmup"}})).job_id()
    warm = JobSpec(dataset="synthetic", arch="fc", rule="bp", optim={"schedule": {"step_size": 10},
                                                                    "warmup": {"steps": 5}})
    assert warm.job_id() != old.job_id()


@pytest.mark.parametrize(("rule", "phase_steps"), [("bp", None), ("sdtp", "alternating")])
def test_the_trainer_ramps_lr_over_the_jobs_first_steps(tmp_path, monkeypatch, rule: str,
                                                        phase_steps: str | None) -> None:
    """Every optimiser step of a job sees the lr of its step count over epochs and phases: 4 steps an epoch
    (256 examples, batch 64), a 6-step ramp, decay 0.5 after epoch 1. An alternating target rule counts both
    of an epoch's passes, so its forward optimiser's ramp is at step 4 when its forward pass begins."""
    from bioscale.grid import resolve
    from bioscale.job import Job
    from bioscale.rules.base import Rule
    from bioscale.store import Store
    from bioscale.train import run_job

    seen: dict[str, list[float]] = {}
    setup = Rule.setup

    def recording(self, *args, **kwargs):
        setup(self, *args, **kwargs)
        for name, opt in self.optimizers.items():
            opt.register_step_pre_hook(lambda o, *_, n=name: seen.setdefault(n, []).append(o.param_groups[0]["lr"]))

    monkeypatch.setattr(Rule, "setup", recording)
    raw = {"dataset": {"name": "synthetic", "params": {"train_size": 256, "test_size": 64, "shape": [1, 8, 8]}},
           "arch": {"name": "fc", "params": {"hidden": [16]}}, "rule": {"name": rule},
           "optim": {"name": "sgd", "lr": 0.1, "warmup": {"steps": 6, "factor": 0.001},
                     "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.5}},
           "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 64, "device": "cpu"}}
    if phase_steps:
        raw["rule"]["params"] = {"schedule": phase_steps}
        raw["inverse_optim"] = {"name": "sgd", "lr": 0.1}
    result = run_job(Job("g", resolve(raw), "ramp"), Store(tmp_path))
    assert result.status == "done", result.error
    ramp = [0.1 * (0.001 + 0.999 * s / 6) if s < 6 else 0.1 for s in range(16)]
    decay = [1.0] * (len(ramp) // 2) + [0.5] * (len(ramp) // 2)
    if phase_steps is None:
        lrs = seen["model"]
        expected = [r * d for r, d in zip(ramp[:8], [1.0] * 4 + [0.5] * 4, strict=True)]
    else:  # the forward optimiser steps in the second pass of each epoch: job steps 4-7 and 12-15
        lrs = seen["model"]
        assert seen["inverse"] == [0.1] * 8  # inverse_optim has no warm-up: its steps 0-3 and 8-11 at lr
        expected = [ramp[s] * decay[s] for s in (4, 5, 6, 7, 12, 13, 14, 15)]
    assert lrs == pytest.approx(expected, rel=1e-12)
