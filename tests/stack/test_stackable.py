"""Which jobs can share a stack, checked against the rule registry: every registered rule either has a
stacked step or is refused with a reason (never run approximately)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bioscale.catalog import ARCHS, RULES
from bioscale.errors import BioscaleError
from bioscale.rules.feedback import DFA
from bioscale.spec import JobSpec
from bioscale.stack import STACK_RULES, STACKED_CLASSES, Stack, stackable
from bioscale.stack.rules import STACKED_RULES, stacked_rule
from tests.stack.cases import FC, specs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", RULES.names())
def test_every_registered_rule_is_stacked_or_refused(name: str) -> None:
    reason = stackable(specs(name))
    if RULES.get(name).impl in STACKED_RULES:
        assert name in STACK_RULES and reason is None
        Stack.build(specs(name)[:2], FC)
    else:
        assert reason is not None and name in reason
        with pytest.raises(BioscaleError, match="cannot train as one stack"):
            Stack.build(specs(name), FC)


def test_the_stacked_classes_are_the_stacked_steps() -> None:
    assert {f"{c.__module__}.{c.__qualname__}" for c in STACKED_RULES} == STACKED_CLASSES
    assert {n for n in RULES.names() if RULES.get(n).impl in STACKED_RULES} == set(STACK_RULES)


def test_stackable_does_not_import_torch() -> None:
    """Planning (the executor forming stacks) may run in a process that never trains."""
    code = ("from bioscale.spec import JobSpec\nfrom bioscale.stack import stackable\n"
            "s = JobSpec.model_validate({'dataset': {'name': 'synthetic'}, 'arch': {'name': 'fc'}, "
            "'rule': {'name': 'dtp'}})\nassert stackable([s, s.model_copy(update={'seed': 1})]) is None\n"
            "import sys\nassert 'torch' not in sys.modules, 'torch'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("arch", ARCHS.names())
def test_only_layered_archs(arch: str) -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "synthetic"}, "arch": {"name": arch}, "rule": {"name": "bp"}})
    reason = stackable(spec)
    assert (reason is None) == (arch in ("fc", "lc", "conv")), reason


def _with(spec: JobSpec, **changes: object) -> JobSpec:
    data = spec.model_dump(mode="json")
    for path, value in changes.items():
        *head, last = path.split("__")
        d = data
        for h in head:
            d = d[h]
        d[last] = value
    return JobSpec.model_validate(data)


@pytest.mark.parametrize(("change", "named"), [
    ({"arch__params": {"hidden": [7, 6]}}, "arch.params.hidden"),
    ({"rule__name": "fa"}, "rule.name"),
    ({"rule__params": {"feedback_init": "he-fanout"}}, "rule.params.feedback_init"),
    ({"optim__name": "sgd"}, "optim.name"),
    ({"optim__last_layer_lr": 0.1}, "last_layer_lr"),
    ({"train__batch_size": 6}, "train.batch_size"),
    ({"dataset__params": {"train_size": 100}}, "dataset.params"),
])
def test_what_members_must_share(change: dict, named: str) -> None:
    base = specs("kp")
    other = _with(base[1], **change)
    reason = stackable([base[0], other])
    assert reason is not None and named in reason, reason


def test_what_members_may_differ_in() -> None:
    base = specs("dtp")
    others = [_with(base[0], seed=9, optim={"lr": 0.3, "betas": [0.5, 0.9], "eps": 1e-4, "weight_decay": 0.1,
                                             "schedule": {"step_size": 2}},
                    rule__params={"alpha": 0.7, "sigma": 0.0})]
    assert stackable([base[0], *others]) is None


@pytest.mark.parametrize("change", [{"train__amp": True}, {"train__compile": True},
                                    {"train__distributed": {"nproc_per_node": 2}}])
def test_refused_runtime_modes(change: dict) -> None:
    assert stackable(_with(specs("bp")[0], **change)) is not None


def test_a_subclass_of_a_stacked_rule_is_refused() -> None:
    """A plugin built on DFA (e.g. examples/plugin_drtp.py) may change the step: no stacked step for it."""

    class Plugin(DFA):
        pass

    stack = Stack.build(specs("dfa")[:2], FC)
    rules = [m.rule for m in stack.members]
    for r in rules:
        r.__class__ = Plugin
    with pytest.raises(BioscaleError, match="has no stacked step"):
        stacked_rule(rules, stack.net, stack.rng)
