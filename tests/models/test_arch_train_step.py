"""Every architecture builds through the catalog and takes one finite step on a tiny batch under bp, fa and ss,
and under dtp where it is layered: every parameter (inverses included) moves."""

from __future__ import annotations

import pytest
import torch

from bioscale.catalog import ARCHS, RULES, load_impl
from bioscale.data.base import DataInfo
from bioscale.models import build_model
from bioscale.spec import ArchSpec, OptimSpec

CASES = [
    ("fc", DataInfo("mnist", (1, 28, 28), 10, 1, 1)),
    ("fc", DataInfo("cifar10", (3, 32, 32), 10, 1, 1)),
    ("lc", DataInfo("mnist", (1, 28, 28), 10, 1, 1)),
    ("lc", DataInfo("mnist", (1, 8, 8), 10, 1, 1)),
    ("lc", DataInfo("imagenet", (3, 32, 32), 5, 1, 1)),  # the 7-layer ImageNet stack on a small input
    ("conv", DataInfo("cifar10", (3, 32, 32), 10, 1, 1)),
    ("resnet18", DataInfo("cifar10", (3, 32, 32), 10, 1, 1)),
    ("alexnet", DataInfo("mnist", (1, 28, 28), 10, 1, 1)),
]


RULE_CASES = [(rule, arch, info) for arch, info in CASES for rule in ("bp", "fa", "ss", "dtp")
              if rule != "dtp" or ARCHS.get(arch).layered]


@pytest.mark.parametrize(("rule_name", "arch", "info"), RULE_CASES,
                         ids=[f"{r}-{a}-{i.family}-{i.input_shape[1]}" for r, a, i in RULE_CASES])
def test_one_step_is_finite_and_changes_every_parameter(rule_name, arch, info):
    torch.manual_seed(0)
    model = build_model(ArchSpec(name=arch), info)
    entry = RULES.get(rule_name)
    rule = load_impl(entry.impl)(entry.params(), OptimSpec(name="adam", lr=1e-3), OptimSpec(name="adam", lr=1e-3))
    model = rule.prepare(model)
    rule.setup(torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, *info.input_shape)
    y = torch.arange(4) % info.num_classes
    out = rule.train_step(x, y)
    assert torch.isfinite(out.loss) and out.logits.shape == (4, info.num_classes)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)
