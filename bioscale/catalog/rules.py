"""Learning rules: names, parameters (with defaults recorded in every job spec) and families."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from bioscale.catalog import RULES, RuleInfo


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BPParams(_Params):
    batch_manhattan: bool = False
    """Replace each gradient by its sign before weight decay and momentum (Xiao's ``--bm``)."""


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


class TargetParams(_Params):
    schedule: Literal["parallel", "alternating"] = "parallel"
    """``parallel``: an inverse and a forward step on every batch; ``alternating``: each epoch, one full
    pass training the inverses, then one full pass training the forward weights (the original DTP code)."""
    sigma: float = Field(0.1, ge=0.0)
    """Std of the Gaussian noise used to train the inverses (Table 5's σ)."""


class DTPParams(TargetParams):
    alpha: PositiveFloat = 0.1
    """Step size α of the penultimate target ĥ_{L-1} = h_{L-1} - α ∂L/∂h_{L-1}, L the per-example loss."""


class AOSDTPParams(TargetParams):
    aux_units: PositiveInt = 512
    """Size of the auxiliary output z = tanh(R h_{L-1}), R fixed and random (512 on CIFAR-10 in the paper)."""


for _info in [
    RuleInfo("bp", "backward", BPParams, "bioscale.rules.bp:BP", "Backpropagation (the control)."),
    RuleInfo("fa", "backward", BackwardParams, "bioscale.rules.feedback:FA",
             "Feedback alignment: a fixed random matrix B replaces W^T in the backward pass."),
    RuleInfo("dfa", "backward", BackwardParams, "bioscale.rules.feedback:DFA",
             "Direct feedback alignment: the output error reaches each hidden layer through its own B.",
             needs_layered=True),
    RuleInfo("ss", "backward", BackwardParams, "bioscale.rules.feedback:SignSymmetry",
             "Sign-symmetry: B = sign(W) times a fixed per-layer scale (Xiao et al.)."),
    RuleInfo("brsf", "backward", BackwardParams, "bioscale.rules.feedback:BRSF",
             "Batchwise random-magnitude sign-concordant feedback (Liao et al.)."),
    RuleInfo("frsf", "backward", BackwardParams, "bioscale.rules.feedback:FRSF",
             "Fixed random-magnitude sign-concordant feedback (Liao et al.)."),
    RuleInfo("kp", "backward", KPParams, "bioscale.rules.feedback:KolenPollack",
             "Kolen-Pollack: B gets W's update plus weight decay, so B and W converge."),
    RuleInfo("dtp", "target", DTPParams, "bioscale.rules.target:DTP",
             "Difference target propagation (Lee et al.), penultimate target by a gradient step.",
             needs_layered=True),
    RuleInfo("sdtp", "target", TargetParams, "bioscale.rules.target:SDTP",
             "Simplified DTP (Bartunov et al. Algorithm 1): no gradient below the output layer.",
             needs_layered=True),
    RuleInfo("aosdtp", "target", AOSDTPParams, "bioscale.rules.target:AOSDTP",
             "Auxiliary-output SDTP (Bartunov et al. Algorithm 2).", needs_layered=True),
]:
    RULES.register(_info.name, _info)
