"""Every member of a stack of 4 (different seeds, lrs, optimiser numbers, sigma/alpha/decay) follows its solo
run in float64 to 1e-6 (seen: at most ~1e-10, sign-symmetry under Adam; most rules ~1e-15), for every rule on
fc (target rules in both schedules) and for the backward and target rules on lc and conv."""

from __future__ import annotations

import pytest

from bioscale.stack.layers import StackedLC2d
from tests.stack.cases import ARCHS, FC, SGD, check, specs

pytestmark = pytest.mark.usefixtures("float64")

BACKWARD = ["bp", "fa", "ss", "frsf", "brsf", "kp", "dfa"]
TARGET = ["dtp", "sdtp", "aosdtp"]


@pytest.mark.parametrize("rule", BACKWARD)
def test_backward_rules_fc(rule: str) -> None:
    per_member = ("decay",) if rule == "kp" else ()
    check(specs(rule, per_member=per_member), FC)


@pytest.mark.parametrize("rule", ["fa", "ss", "kp"])
def test_sgd_momentum_weight_decay_and_variants(rule: str) -> None:
    params = {"kp": {"decay_mode": "lr_scaled", "decay": 0.5}, "fa": {"batch_manhattan": True},
              "ss": {"last_layer_bp": True}}[rule]
    check(specs(rule, params=params, optim=SGD), FC)


@pytest.mark.parametrize("schedule_", ["parallel", "alternating"])
@pytest.mark.parametrize("rule", TARGET)
def test_target_rules_fc(rule: str, schedule_: str) -> None:
    per_member = ("sigma", "alpha") if rule == "dtp" else ("sigma",)
    params = {"schedule": schedule_, **({"aux_units": 6} if rule == "aosdtp" else {})}
    check(specs(rule, params=params, per_member=per_member, inverse=list(reversed(SGD))), FC)


def test_dtp_batch_mean_alpha() -> None:
    check(specs("dtp", params={"alpha_convention": "batch_mean"}, per_member=("sigma", "alpha")), FC)


@pytest.fixture
def lc_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The stacked LC layer runs member by member on the CPU and as one batched matmul on a GPU: check both
    here (the second by declaring the CPU a batching device)."""
    if request.param == "batched":
        monkeypatch.setattr(StackedLC2d, "batched_on", ("cpu", "cuda"))
    return request.param


LOCAL = [("lc", "per member"), ("lc", "batched"), ("conv", "per member")]


@pytest.mark.parametrize(("arch", "lc_path"), LOCAL, indirect=["lc_path"])
@pytest.mark.parametrize("rule", ["bp", "fa", "ss", "frsf", "brsf", "kp", "dfa", "dtp", "sdtp", "aosdtp"])
def test_local_archs(rule: str, arch: str, lc_path: str) -> None:
    per_member = {"dtp": ("sigma", "alpha"), "sdtp": ("sigma",), "aosdtp": ("sigma",), "kp": ("decay",)}.get(rule, ())
    params = {"aux_units": 5} if rule == "aosdtp" else None
    info = ARCHS[arch][1]
    check(specs(rule, arch=arch, params=params, per_member=per_member), info)


@pytest.mark.parametrize(("arch", "lc_path"), LOCAL, indirect=["lc_path"])
def test_local_archs_alternating(arch: str, lc_path: str) -> None:
    check(specs("dtp", arch=arch, params={"schedule": "alternating"}, per_member=("sigma", "alpha"),
                inverse=list(reversed(SGD))), ARCHS[arch][1])


def test_lr_schedule_per_member() -> None:
    optim = [{**o, "schedule": {"step_size": s, "gamma": g}} for o, s, g in
             zip(SGD, [1, 2, 1, 3], [0.5, 0.1, 0.9, 0.3], strict=True)]
    optim = [{**o, "last_layer_lr": llr} for o, llr in zip(optim, [0.3, 0.01, 0.1, 0.05], strict=True)]
    check(specs("fa", optim=optim), FC, epochs=3, steps=2)
