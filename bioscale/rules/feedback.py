"""The feedback-alignment family: rules that change only what flows backward.

Each rule is a small class that says which feedback matrix B replaces W^T (papers.md B.3 and "Related
definitions"); the layers (``bioscale.layers.feedback``) and the converter do the rest:

- ``FA``: a fixed random B per layer, drawn at ``prepare`` from the global torch RNG (Lillicrap et al.).
- ``SignSymmetry``: B = sign(W) * a fixed per-layer scale, from the current W at every step (Xiao et al.).
- ``FRSF`` / ``BRSF``: B = |M| * sign(W) with M drawn once / redrawn after every update (Liao et al.).
- ``KolenPollack``: B gets exactly W's update, and both decay, so W - B shrinks every step.
- ``DFA``: the output error e reaches every hidden layer directly through its own fixed B_l (Nokland 2016).

Batch norm, pooling, activations and residual adds keep backprop. ``last_layer_bp`` leaves the output
layer (``output_module``) as plain backprop. The scale options are described in ``bioscale.layers.feedback``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from bioscale.catalog import register_rule
from bioscale.errors import BioscaleError
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


class BackwardParams(BPParams):
    feedback_init: Literal["xavier", "he-fanout", "xiao"] = "xavier"
    """Per-layer feedback scale s: ``xavier`` sqrt(2/(fan_in+fan_out)) as in BioTorch; ``he-fanout``
    sqrt(2/fan_out); ``xiao`` as Xiao et al.'s code (conv: sqrt(2/(k*k*C_out)), linear: 1/sqrt(fan_in)),
    with fan_in = C_in*k*k, fan_out = C_out*k*k. A random B (fa, kp, dfa) is N(0, s^2), except ``xiao`` on
    a linear layer: U(-s, s) as in Xiao's code; ss uses B = s*sign(W); frsf/brsf use |M|*sign(W) with M
    drawn like a random B."""
    last_layer_bp: bool = False
    """Keep backprop in the output layer (Xiao's code default; Bartunov et al. apply the rule everywhere).
    DFA always trains the output layer with its true gradient, so this changes nothing there."""


class KPParams(BackwardParams):
    decay: float = Field(1e-4, ge=0.0)
    """Weight decay applied to both W and B, which makes them converge (Kolen & Pollack): after each step
    W <- (1 - lr*decay) W and B <- (1 - lr*decay) B at the layer's current lr, so W - B shrinks by that
    factor every step (B gets exactly W's update otherwise)."""


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


@register_rule("fa", family="backward", params=BackwardParams, display="FA", order=40,
               summary="Feedback alignment: a fixed random matrix B replaces W^T in the backward pass.",
               source="Lillicrap et al. 2016; Bartunov et al. 2018 (FA); scales as BioTorch")
class FA(FeedbackRule):
    """Feedback alignment: a fixed random B per layer (a buffer: checkpointed, moved with the model)."""

    def make_feedback(self, weight: Tensor) -> nn.Module:
        return feedback_lib.MatrixFeedback.random(weight, self.params.feedback_init)


@register_rule("ss", family="backward", params=BackwardParams, display="SS", order=60,
               summary="Sign-symmetry: B = sign(W) times a fixed per-layer scale.",
               source=f"{XIAO}; default scale as BioTorch (feedback_init=xavier)")
class SignSymmetry(FeedbackRule):
    """Sign-symmetry: B = sign(W) * scale, recomputed from the current W once per forward pass (= once
    per training step: the layer computes it in forward and saves it for backward; never in evaluation)."""

    def make_feedback(self, weight: Tensor) -> nn.Module:
        return feedback_lib.SignFeedback(feedback_lib.feedback_scale(weight.shape, self.params.feedback_init), weight)


@register_rule("frsf", family="backward", params=BackwardParams, display="frSF", order=80,
               summary="Fixed random-magnitude sign-concordant feedback: B = |M| sign(W), M drawn once.",
               source=LIAO)
class FRSF(FeedbackRule):
    """Fixed random-magnitude sign-concordant feedback: B = |M| * sign(W), M drawn once."""

    def make_feedback(self, weight: Tensor) -> nn.Module:
        return feedback_lib.SignMagnitudeFeedback.random(weight, self.params.feedback_init)


@register_rule("brsf", family="backward", params=BackwardParams, display="brSF", order=70,
               summary="Batchwise random-magnitude sign-concordant feedback: |M| redrawn after every update.",
               source=LIAO)
class BRSF(FRSF):
    """Batchwise random-magnitude sign-concordant feedback: M is redrawn after every update of W."""

    def after_step(self) -> None:
        for layer in self._layers.values():
            layer.feedback.redraw_()


@register_rule("kp", family="backward", params=KPParams, display="KP", order=90,
               summary="Kolen-Pollack: B gets W's update plus weight decay, so B and W converge.",
               source="Kolen & Pollack 1994; Akrout et al. 2019")
class KolenPollack(FA):
    """Kolen-Pollack: B starts random and receives exactly W's update; then both decay.

    "The same update" is implemented as B <- B + (W_new - W_old), whatever the optimiser (SGD, momentum,
    Adam, Batch Manhattan): B - W is stashed in B before the step and W_new added back after it, so no
    copy and no second optimiser state is needed. The decay is decoupled weight decay at each parameter
    group's current lr: W <- (1 - lr*decay) W and B <- (1 - lr*decay) B, so W - B shrinks by exactly that
    factor each step and the two converge (any ``optim.weight_decay`` acts on W only, as usual).
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
                factors = [1.0 - lr * self.params.decay for lr in self._weight_lrs(ws)]
                for w, b, f in zip(ws, bs, factors, strict=True):
                    w.mul_(f)
                    b.mul_(f)

    def _weight_lrs(self, ws: list[Tensor]) -> list[float]:
        lr = {id(p): g["lr"] for g in self.optimizers["model"].param_groups for p in g["params"]}
        return [float(lr.get(id(w), 0.0)) for w in ws]


@register_rule("dfa", family="backward", params=BackwardParams, display="DFA", order=50,
               needs_layered=True,
               summary="Direct feedback alignment: the output error reaches each hidden layer through its own B.",
               source="Nokland 2016; Bartunov et al. 2018 (DFA)")
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
            drawn = feedback_lib.draw_feedback(proto, self.params.feedback_init)
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


__all__ = ["BRSF", "DFA", "FA", "FRSF", "FeedbackRule", "KolenPollack", "SignSymmetry"]
