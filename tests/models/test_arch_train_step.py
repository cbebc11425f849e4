"""Contract: every rule x arch pair the compatibility check allows takes one finite training step that moves
every parameter (inverses included), read from the registries, so a new registration is tested without
editing this file; and every arch builds for its dataset shapes (the ImageNet stack on a small input, ...)."""

from __future__ import annotations

import math

import pytest
import torch

from bioscale import tasks
from bioscale.catalog import ARCHS, DATASETS, RULES, compat
from bioscale.data.base import DataShape
from bioscale.models import build_model
from bioscale.spec import ArchSpec, OptimSpec

CASES = [
    ("fc", DataShape("mnist", (1, 28, 28), 10, 1, 1)),
    ("fc", DataShape("cifar10", (3, 32, 32), 10, 1, 1)),
    ("lc", DataShape("mnist", (1, 28, 28), 10, 1, 1)),
    ("lc", DataShape("mnist", (1, 8, 8), 10, 1, 1)),
    ("lc", DataShape("imagenet", (3, 32, 32), 5, 1, 1)),  # the 7-layer ImageNet stack on a small input
    ("conv", DataShape("cifar10", (3, 32, 32), 10, 1, 1)),
    ("resnet18", DataShape("cifar10", (3, 32, 32), 10, 1, 1)),
    ("alexnet", DataShape("mnist", (1, 28, 28), 10, 1, 1)),
]


def _smallest_dataset(rule: str, arch: str) -> str | None:
    """The registered dataset of the arch's task with the fewest input pixels this pair can run on."""
    task = ARCHS.get(arch).task
    fits = [d for d in DATASETS.values() if d.task == task and compat.compatible(rule, arch, d.name)]
    return min(fits, key=lambda d: (math.prod(d.input_shape), d.order)).name if fits else None


def _shape(dataset: str) -> DataShape:
    d = DATASETS.get(dataset)
    return DataShape(d.family, d.input_shape, d.num_classes, 1, 1)


PAIRS = [(r, a, d) for r in RULES.names() for a in ARCHS.names() if (d := _smallest_dataset(r, a)) is not None]
SHAPE_CASES = [(rule, arch, info) for arch, info in CASES for rule in ("fa", "dtp")
               if not (RULES.get(rule).needs_layered and not ARCHS.get(arch).layered)]
RULE_CASES = [(rule, arch, _shape(d)) for rule, arch, d in PAIRS] + SHAPE_CASES


def test_every_registered_pair_is_covered() -> None:
    """No rule or arch is left without a step; the layered-only rules are refused on torchvision nets."""
    assert {r for r, _, _ in PAIRS} == set(RULES.names())
    assert {a for _, a, _ in PAIRS} == set(ARCHS.names())
    for rule in RULES.values():
        for arch in ARCHS.values():
            allowed = any(r == rule.name and a == arch.name for r, a, _ in PAIRS)
            assert allowed == (arch.layered or not rule.needs_layered), (rule.name, arch.name)


@pytest.mark.parametrize(("rule_name", "arch", "info"), RULE_CASES,
                         ids=[f"{r}-{a}-{i.family}-{i.input_shape[1]}" for r, a, i in RULE_CASES])
def test_one_step_is_finite_and_changes_every_parameter(rule_name, arch, info):
    torch.manual_seed(0)
    model = build_model(ArchSpec(name=arch), info)
    entry = RULES.get(rule_name)
    rule = entry.impl(entry.params(), OptimSpec(name="adam", lr=1e-3), OptimSpec(name="adam", lr=1e-3))
    model = rule.prepare(model)
    rule.setup(torch.device("cpu"))
    rule.task = tasks.get(ARCHS.get(arch).task)
    before = [p.detach().clone() for p in model.parameters()]
    if rule.task.name == "detection":  # images of the data's size, one box of each class
        x = [torch.rand(*info.input_shape) for _ in range(2)]
        side = info.input_shape[-1]
        y = [{"boxes": torch.tensor([[side * 0.1, side * 0.2, side * 0.6, side * 0.7]]), "labels": torch.tensor([k])}
             for k in range(2)]
        out = rule.train_step(x, y)
        assert torch.isfinite(out.loss) and out.logits is None
    else:
        x = torch.randn(4, *info.input_shape)
        y = torch.arange(4) % info.num_classes
        out = rule.train_step(x, y)
        assert torch.isfinite(out.loss) and out.logits.shape == (4, info.num_classes)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(changed)
