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
    """Scale of feedback matrices: ``xavier`` sqrt(2/(fan_in+fan_out)) as in BioTorch; ``he-fanout``
    sqrt(2/fan_out); ``xiao`` as Xiao et al.'s code (conv: sqrt(2/(k*k*C_out)), linear: 1/sqrt(fan_in))."""
    last_layer_bp: bool = False
    """Keep backprop in the output layer (Xiao's code default; Bartunov et al. apply the rule everywhere)."""


class KPParams(BackwardParams):
    decay: float = Field(1e-4, ge=0.0)
    """Weight decay applied to both W and B, which makes them converge (Kolen & Pollack)."""


class TargetParams(_Params):
    schedule: Literal["parallel", "alternating"] = "parallel"
    sigma: float = Field(0.1, ge=0.0)
    """Std of the Gaussian noise used to train the inverses."""


class DTPParams(TargetParams):
    alpha: PositiveFloat = 0.1
    """Step size of the gradient step that sets the penultimate target."""


class AOSDTPParams(TargetParams):
    aux_units: PositiveInt = 512
    """Size of the auxiliary random-feature output z (512 on CIFAR-10 in the paper)."""


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
