"""Learning rules. ``build_rule(spec)`` instantiates the registered rule for a job.

Each rule registers itself (``bioscale.catalog.register_rule``) in the module that implements it; importing
this package or a rule module does not import torch."""

from __future__ import annotations

from bioscale.catalog import RULES
from bioscale.rules.base import BackwardRule, Rule, StepOutput
from bioscale.spec import JobSpec

__all__ = ["BackwardRule", "Rule", "StepOutput", "build_rule"]


def build_rule(spec: JobSpec) -> Rule:
    record = RULES.get(spec.rule.name)
    return record.impl(record.params.model_validate(spec.rule.params), spec.optim, spec.inverse_optim)
