"""``bioscale list rules`` says which paper each rule, and each default convention, follows (issue 16)."""

from __future__ import annotations

import pytest

from bioscale.catalog import RULES
from bioscale.listing import rows


def _rules() -> dict[str, tuple[str, str]]:
    return {name: (summary, params) for name, summary, params in rows("rules")}


@pytest.mark.parametrize("name", RULES.names())
def test_every_rule_names_the_paper_it_follows(name: str) -> None:
    summary, _ = _rules()[name]
    assert "follows:" in summary and RULES.get(name).source in summary


@pytest.mark.parametrize(("name", "default", "paper"), [
    ("ss", "feedback_init='xiao'", "default scale as their code (feedback_init=xiao"),
    ("dtp", "alpha_convention='batch_mean'", "alpha_convention batch_mean (Lee's code"),
    ("kp", "decay_mode='per_step'", "Akrout et al. 2019 (decay per step"),
    ("fa", "feedback_dist='normal'", "drawn normal"),
])
def test_issue_16_defaults_are_listed_with_the_paper_they_follow(name: str, default: str, paper: str) -> None:
    summary, params = _rules()[name]
    assert default in params
    assert paper in summary
