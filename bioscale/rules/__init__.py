"""Learning rules. ``build_rule(spec)`` instantiates the registered rule for a job."""

from __future__ import annotations

from bioscale.catalog import RULES, load_impl
from bioscale.rules.base import BackwardRule, Rule, StepOutput
from bioscale.spec import JobSpec

__all__ = ["BackwardRule", "Rule", "StepOutput", "build_rule"]


def build_rule(spec: JobSpec) -> Rule:
    info = RULES.get(spec.rule.name)
    params = info.params.model_validate(spec.rule.params)
    return load_impl(info.impl)(params, spec.optim, spec.inverse_optim)
