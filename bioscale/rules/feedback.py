"""The feedback-alignment family: rules that change only what flows backward.

Each rule is a small class that says which feedback matrix B replaces W^T (papers.md B.3 and "Related
definitions"); the layers (``bioscale.layers.feedback``) and the converter do the rest:

- ``FA``: a fixed random B per layer, drawn at ``prepare`` from the global torch RNG (Lillicrap et al.).
- ``SignSymmetry``: B = sign(W) * a fixed per-layer scale (Xiao et al.'s code's, by default), from the
  current W at every step.
- ``FRSF`` / ``BRSF``: B = |M| * sign(W) with M drawn once / redrawn after every update (Liao et al.).
- ``KolenPollack``: B gets exactly W's update, and both decay by λ per step, so W - B shrinks every step
  (Akrout et al. 2019).
- ``DFA``: the output error e reaches every hidden layer directly through its own fixed B_l (Nokland 2016).

Batch norm, pooling, activations and residual adds keep backprop. ``last_layer_bp`` leaves the output
layer (``output_module``) as plain backprop. The scale and draw options are described in
``bioscale.layers.feedback``; each rule's ``source`` (``bioscale list rules``) says which paper its defaults follow.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from bioscale.catalog import register_rule
from bioscale.errors import BioscaleError
from bioscale.ids import added
from bioscale.lazy import lazy
from bioscale.rules.base import BackwardRule, BPParams

if TYPE_CHECKING:
    from torch import Tensor

    from bioscale.layers.convert import ConversionReport
    from bioscale.models.base import LayeredNet

torch = lazy("torch")
nn = lazy("torch.nn")
convert_lib = lazy("bioscale.layers.convert")
feedback_lib = lazy("bioscale.layers.feedback")
models_base = lazy("bioscale.models.base")
angles = lazy("bioscale.rules.angles")

XIAO = "Xiao, Chen, Liao, Poggio 2018"
LIAO = "Liao, Leibo, Poggio 2016"
RANDOM_B = ("feedback scale xavier (BioTorch's), drawn normal (no paper states the draw; BioTorch's is "
            "feedback_dist=uniform)")
KP_DECAY = 1e-2


class BackwardParams(BPParams):
    feedback_init: Literal["xavier", "he-fanout", "xiao"] = "xavier"
    """Per-layer feedback scale s: ``xavier`` sqrt(2/(fan_in+fan_out)) as in BioTorch (the default of every
    rule but ss: Bartunov et al. and Lillicrap et al. do not state theirs; Glorot is their forward init);
    ``he-fanout`` sqrt(2/fan_out); ``xiao`` as Xiao et al.'s code (conv: sqrt(2/(k*k*C_out)), linear:
    1/sqrt(fan_in)), with fan_in = C_in*k*k, fan_out = C_out*k*k. ss uses B = s*sign(W); a random B (fa, kp,
    dfa) has std s, drawn by ``feedback_dist``, except ``xiao`` which draws as Xiao's code (conv N(0, s^2),
    linear U(-s, s)); frsf/brsf use |M|*sign(W) with M drawn like a random B."""
    last_layer_bp: bool = False
    """Keep backprop in the output layer (Xiao's code default; Bartunov et al. apply the rule everywhere).
    DFA always trains the output layer with its true gradient, so this changes nothing there."""


class SSParams(BackwardParams):
    feedback_init: Literal["xavier", "he-fanout", "xiao"] = "xiao"
    """Per-layer scale s of B = s*sign(W). Default ``xiao``: Xiao et al.'s code (conv sqrt(2/(k*k*C_out)),
    the He/ResNet init std; linear 1/sqrt(fan_in)); ``xavier`` sqrt(2/(fan_in+fan_out)) is BioTorch's uSF
    scale (bioscale's default before issue 16); ``he-fanout`` sqrt(2/fan_out)."""


class RandomFeedbackParams(BackwardParams):
    feedback_dist: Literal["normal", "uniform"] = added("normal")
    """How a random B (or frsf/brsf's M) is drawn at std s (``feedback_init``): ``normal`` N(0, s^2)
    (default; neither Bartunov et al. nor Lillicrap et al. state a distribution) or ``uniform``
    U(-sqrt(3) s, sqrt(3) s), BioTorch's Glorot-uniform (``nn.init.xavier_uniform_``) when s is ``xavier``.
    Same std; mean |B| is 8% smaller for normal (0.80 s vs 0.87 s), which is what frsf/brsf's |M| sees.
    ``feedback_init: xiao`` draws as Xiao's code and takes only the default."""

    @model_validator(mode="after")
    def _xiao_draws_its_own_way(self) -> RandomFeedbackParams:
        if self.feedback_init == "xiao" and self.feedback_dist != "normal":
            raise ValueError(
                "feedback_dist applies to feedback_init xavier and he-fanout only: xiao draws exactly as Xiao "
                "et al.'s code (conv N(0, s^2), linear U(-s, s)). Leave feedback_dist at normal with xiao."
            )
        return self


class KPParams(RandomFeedbackParams):
    decay: float = Field(KP_DECAY, ge=0.0)
    """Weight decay λ applied to both W and B after every step, which makes them converge (Kolen & Pollack
    1994; Akrout et al. 2019, Eqs. 16-17): W - B shrinks by the same factor as each of them. The factor
    is set by ``decay_mode``. Per step, λ trades alignment speed for weight size: W - B falls to e^{-λt}
    of its start after t steps, while under Adam |W| stays below about lr/λ per entry. The default 1e-2
    (before issue 16: 1e-4 with ``lr_scaled``) aligns every layer of the MNIST FC net below 10 degrees
    within 20 epochs of mnist-5k (620 steps of 128) under Adam lr 1e-3 or SGD lr 0.01 with momentum
    (results/fidelity/README.md); long runs (ImageNet: ~5000 steps an epoch) want a far smaller λ."""
    decay_mode: Literal["per_step", "lr_scaled"] = added("per_step", baseline="lr_scaled")
    """``per_step`` (default): W <- (1 - λ) W and B <- (1 - λ) B after every step, whatever the optimiser
    and its lr, as Akrout et al.'s released code applies it (fcnn/FCNN_KP.py: ``weight_decay * w -
    lr * ΔW`` for W and the same for B, citing the paper's Eqs. 16-17); W - B = (1 - λ)^t (W_0 - B_0).
    ``lr_scaled``: the factor is 1 - lr·λ at the layer's current lr (decoupled weight decay; bioscale's
    only behaviour before issue 16): with Adam at lr 1e-4 and λ 1e-4 it is 1 - 1e-8 per step, so W - B
    never shrinks and kp trains like fa."""

    @model_validator(mode="after")
    def _decay_below_one(self) -> KPParams:
        if self.decay_mode == "per_step" and self.decay >= 1.0:
            raise ValueError(f"decay {self.decay} with decay_mode per_step would zero or flip W and B every "
                             "step: give a per-step decay below 1 (e.g. 1e-3).")
        return self


class _AlignmentRule(BackwardRule):
    """A backward rule whose gradient pass (``rule_backward``) can be compared with backprop's."""

    params: BackwardParams

    def backprop_backward(self, x: Tensor, y: Tensor) -> object:
        """The same pass with true backprop everywhere (for the diagnostics)."""
        raise NotImplementedError

    def diagnosed_layers(self) -> dict[str, nn.Module]:
        """Layers whose update the rule changes, by qualified name."""
        raise NotImplementedError

    def diagnostics(self, x: Tensor, y: Tensor) -> dict[str, float]:
        assert self.model is not None
        layers = self.diagnosed_layers()
        return angles.gradient_angles(self.model, layers, lambda: self.rule_backward(x, y),
                               lambda: self.backprop_backward(x, y))


class FeedbackRule(_AlignmentRule):
    """Swap every Linear/Conv2d/LocallyConnected2d for a feedback layer whose B is ``make_feedback(W)``."""

    report: ConversionReport | None = None
    _layers: dict[str, nn.Module]

    @property
    def feedback_dist(self) -> feedback_lib.FeedbackDist:
        """``feedback_dist`` of the params; "normal" for params without it (ss, plugins built on
        ``BackwardParams``, which drew normal before the field existed)."""
        return getattr(self.params, "feedback_dist", "normal")

    def make_feedback(self, weight: Tensor) -> nn.Module:
        raise NotImplementedError

    def convert(self, model: nn.Module) -> nn.Module:
        keep = [models_base.output_module(model)] if self.params.last_layer_bp else []
        self.report = convert_lib.convert_to_feedback(model, self.make_feedback, keep_bp=keep)
        self._layers = {n: m for n, m in model.named_modules() if feedback_lib.is_feedback_layer(m)}
        if not self._layers:
            raise BioscaleError(
                f"rule {type(self).__name__} found no Linear, Conv2d or LocallyConnected2d layer to convert "
                f"in {type(model).__name__} ({self.report}); training it would be plain backprop. Use a "
                "model with such layers, or turn off last_layer_bp if the output layer is the only one."
            )
        return model

    def diagnosed_layers(self) -> dict[str, nn.Module]:
        return self._layers

    def describe(self) -> str | None:
        return str(self.report) if self.report is not None else None

    def backprop_backward(self, x: Tensor, y: Tensor) -> object:
        with angles.backprop_mode(self._layers):
            return self.rule_backward(x, y)

    def diagnostics(self, x: Tensor, y: Tensor) -> dict[str, float]:
        return {**super().diagnostics(x, y), **angles.weight_feedback_angles(self._layers)}


@register_rule("fa", family="backward", params=RandomFeedbackParams, display="FA", order=40,
               summary="Feedback alignment: a fixed random matrix B replaces W^T in the backward pass.",
               source=f"Lillicrap et al. 2016; Bartunov et al. 2018 (FA); defaults: {RANDOM_B}")
class FA(FeedbackRule):
    """Feedback alignment: a fixed random B per layer (a buffer: checkpointed, moved with the model)."""

    def make_feedback(self, weight: Tensor) -> nn.Module:
        return feedback_lib.MatrixFeedback.random(weight, self.params.feedback_init, self.feedback_dist)


@register_rule("ss", family="backward", params=SSParams, display="SS", order=60,
               summary="Sign-symmetry: B = sign(W) times a fixed per-layer scale.",
               source=f"{XIAO}; default scale as their code (feedback_init=xiao; BioTorch's: xavier)")
class SignSymmetry(FeedbackRule):
    """Sign-symmetry: B = sign(W) * scale, recomputed from the current W once per forward pass (= once
    per training step: the layer computes it in forward and saves it for backward; never in evaluation)."""

    def make_feedback(self, weight: Tensor) -> nn.Module:
        return feedback_lib.SignFeedback(feedback_lib.feedback_scale(weight.shape, self.params.feedback_init), weight)


@register_rule("frsf", family="backward", params=RandomFeedbackParams, display="frSF", order=80,
               summary="Fixed random-magnitude sign-concordant feedback: B = |M| sign(W), M drawn once.",
               source=f"{LIAO}; defaults: M {RANDOM_B}")
class FRSF(FeedbackRule):
    """Fixed random-magnitude sign-concordant feedback: B = |M| * sign(W), M drawn once."""

    def make_feedback(self, weight: Tensor) -> nn.Module:
        return feedback_lib.SignMagnitudeFeedback.random(weight, self.params.feedback_init, self.feedback_dist)


@register_rule("brsf", family="backward", params=RandomFeedbackParams, display="brSF", order=70,
               summary="Batchwise random-magnitude sign-concordant feedback: |M| redrawn after every update.",
               source=f"{LIAO}; defaults: M {RANDOM_B}")
class BRSF(FRSF):
    """Batchwise random-magnitude sign-concordant feedback: M is redrawn after every update of W."""

    def after_step(self) -> None:
        for layer in self._layers.values():
            layer.feedback.redraw_()


@register_rule("kp", family="backward", params=KPParams, display="KP", order=90,
               summary="Kolen-Pollack: B gets W's update plus weight decay, so B and W converge.",
               source=f"Kolen & Pollack 1994; Akrout et al. 2019 (decay per step, Eqs. 16-17); B0: {RANDOM_B}")
class KolenPollack(FA):
    """Kolen-Pollack: B starts random and receives exactly W's update; then both decay.

    "The same update" is implemented as B <- B + (W_new - W_old), whatever the optimiser (SGD, momentum,
    Adam, Batch Manhattan): B - W is stashed in B before the step and W_new added back after it, so no
    copy and no second optimiser state is needed. W's change includes any ``optim.weight_decay`` the
    optimiser applies to W (SGD: -lr·wd·W; Adam folds it into its moments, where it cannot be separated
    from the gradient step), so B moves by that too and the optimiser's weight decay never changes W - B;
    B itself is not a parameter, so the optimiser never decays B by its own value. What makes W and B
    converge is ``decay``, applied to both after the step (``decay_mode``): W - B shrinks by exactly the
    decay factor each step.
    """

    params: KPParams

    def _pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        layers = list(self._layers.values())
        return [m.weight for m in layers], [m.feedback.matrix for m in layers]

    def before_step(self) -> None:
        ws, bs = self._pairs()
        with torch.no_grad():
            torch._foreach_sub_(bs, ws)

    def after_step(self) -> None:
        ws, bs = self._pairs()
        with torch.no_grad():
            torch._foreach_add_(bs, ws)
            if self.params.decay > 0:
                for w, b, f in zip(ws, bs, self.decay_factors(ws), strict=True):
                    w.mul_(f)
                    b.mul_(f)

    def decay_factors(self, ws: list[Tensor]) -> list[float]:
        """What W and B of each layer are multiplied by after a step (``KPParams.decay_mode``)."""
        if self.params.decay_mode == "per_step":
            return [1.0 - self.params.decay] * len(ws)
        lr = {id(p): g["lr"] for g in self.optimizers["model"].param_groups for p in g["params"]}
        return [1.0 - float(lr.get(id(w), 0.0)) * self.params.decay for w in ws]


@register_rule("dfa", family="backward", params=RandomFeedbackParams, display="DFA", order=50,
               needs_layered=True,
               summary="Direct feedback alignment: the output error reaches each hidden layer through its own B.",
               source=f"Nokland 2016; Bartunov et al. 2018 (DFA); defaults: {RANDOM_B}")
class DFA(_AlignmentRule):
    """Direct feedback alignment (Nokland 2016) on a ``LayeredNet``.

    With e = dL/d(logits), hidden layer l gets delta_l = (B_l e) * f'(a_l) (a_l its pre-activation) and
    nothing from the layer above. Implemented exactly: each layer's input is detached from the layer
    below, so no error flows between layers, and one ``autograd.backward`` call seeds the output with e and
    every hidden output h_l with e @ B_l (the shape of h_l). Autograd then applies the activation derivative
    f'(a_l) and forms the ordinary local weight gradient delta_l h_{l-1}^T. The output layer gets its true
    gradient e h_{L-1}^T (so ``last_layer_bp`` changes nothing for DFA).

    B_l is stored as ``layers.<l>.direct_feedback.matrix``, shape (classes, numel(h_l)), drawn at
    ``prepare`` like a linear layer's feedback matrix from numel(h_l) inputs to ``classes`` outputs.
    """

    compiles_model: ClassVar[bool] = False
    eager_reason: ClassVar[str] = ("dfa runs each layer on its own, with its input detached and one backward "
                                   "seeded per layer, not the model whole")
    _net: LayeredNet
    _layers: dict[str, nn.Module]

    def convert(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, models_base.LayeredNet) or len(model.layers) < 2:
            raise BioscaleError(
                f"rule {type(self).__name__} needs a layered architecture (LayeredNet, e.g. arch fc, lc or conv) "
                "with at least "
                f"one hidden layer, got {type(model).__name__}; torchvision nets such as resnet18 have no "
                "single chain of layers to send the output error to. Use fa or ss for those."
            )
        classes = math.prod(model.layers[-1].out_shape)
        weight = model.layers[-1].op.weight
        for layer in model.layers[:-1]:
            shape = (classes, math.prod(layer.out_shape))
            proto = torch.empty(shape, device=weight.device, dtype=weight.dtype)
            drawn = feedback_lib.draw_feedback(proto, self.params.feedback_init,
                                               getattr(self.params, "feedback_dist", "normal"))
            layer.direct_feedback = feedback_lib.MatrixFeedback(drawn)
        self._net = model
        self._layers = {f"layers.{i}.op": layer.op for i, layer in enumerate(model.layers[:-1])}
        return model

    def describe(self) -> str | None:
        return f"direct feedback from the output to {len(self._layers)} hidden layers: {', '.join(self._layers)}"

    def diagnosed_layers(self) -> dict[str, nn.Module]:
        return self._layers

    def rule_backward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        model = self._net  # not self.model, which the trainer may have wrapped in torch.compile
        hidden: list[tuple[Tensor, Tensor]] = []
        h = x
        with self.autocast():
            for layer in model.layers[:-1]:
                out = layer(h)
                hidden.append((out, layer.direct_feedback.matrix))
                h = out.detach()
            logits = model.layers[-1](h)
            loss = self.criterion(logits, y)
        (e,) = torch.autograd.grad(loss, logits)
        e2 = self.direct_signal(e, y).reshape(e.shape[0], -1)
        outputs, seeds = [logits], [e]
        for out, b in hidden:
            if out.requires_grad:
                outputs.append(out)
                seeds.append(e2.to(b.dtype).matmul(b).to(out.dtype).view_as(out))
        torch.autograd.backward(outputs, seeds)
        return loss, logits

    def direct_signal(self, e: Tensor, y: Tensor) -> Tensor:
        """What B_l projects to hidden layer l: the output error e = dL/dlogits of the batch-mean loss.
        A subclass may send something else (DRTP sends the one-hot target, ``examples/plugin_drtp.py``)."""
        return e

    def backprop_backward(self, x: Tensor, y: Tensor) -> object:
        return BackwardRule.rule_backward(self, x, y)


__all__ = ["BRSF", "DFA", "FA", "FRSF", "BackwardParams", "FeedbackRule", "KPParams", "KolenPollack",
           "RandomFeedbackParams", "SSParams", "SignSymmetry"]
