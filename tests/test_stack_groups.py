"""Which jobs share a stack (``bioscale.stack_groups``): only seeds and numeric hyperparameters may differ."""

from __future__ import annotations

import json

import pytest

from bioscale.grid import expand, resolve
from bioscale.job import Job
from bioscale.spec import GridSpec
from bioscale.stack_groups import member_values, plan_stacks, stack_key

BASE = {"dataset": "synthetic", "arch": "fc", "rule": "dtp",
        "optim": {"name": "adam", "lr": 1e-3}, "inverse_optim": {"name": "adam", "lr": 1e-3}}


def _job(grid: str = "g", **changes: object) -> Job:
    """The base job with ``a__b__c=value`` set (components given by name become ``{name: ...}``)."""
    raw = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        *path, last = key.split("__")
        node = raw
        for part in path:
            if not isinstance(node.get(part), dict):
                node[part] = {"name": node[part]} if isinstance(node.get(part), str) else {}
            node = node[part]
        node[last] = value
    return Job(grid, resolve(raw), "j")


@pytest.mark.parametrize("change", [
    {"seed": 3}, {"optim__lr": 2e-4}, {"optim__betas": [0.8, 0.99]}, {"optim__eps": 1e-4},
    {"optim__weight_decay": 1e-5}, {"inverse_optim__lr": 5e-3}, {"rule__params__alpha": 0.3},
    {"rule__params__sigma": 0.2}, {"optim__schedule": {"step_size": 5}},
])
def test_seeds_and_numeric_hyperparameters_share_a_stack(change: dict) -> None:
    a, b = _job(), _job(**change)
    assert a.job_id != b.job_id and stack_key(a) == stack_key(b)
    assert member_values(a) != member_values(b)


@pytest.mark.parametrize("change", [
    {"rule__params__schedule": "alternating"}, {"arch__params__hidden": [64]}, {"optim__name": "sgd"},
    {"train__batch_size": 64}, {"train__epochs": 3}, {"dataset__params__train_size": 100},
    {"dataset__params__test_size": 50},
])
def test_anything_that_shapes_the_computation_does_not(change: dict) -> None:
    assert stack_key(_job()) != stack_key(_job(**change))


def test_grid_budget_and_start_epoch_separate_stacks() -> None:
    job = _job()
    assert stack_key(job) != stack_key(_job("other"))
    assert stack_key(job) != stack_key(Job(job.grid, job.spec, job.label, stop_after=10))
    assert stack_key(job, start=0) != stack_key(job, start=4)


def test_a_family_splits_into_near_equal_stacks_in_grid_order() -> None:
    grid = GridSpec(name="g", base=BASE, axes={"seed": list(range(10)), "rule.name": ["dtp", "fa"]})
    jobs = expand(grid)
    stacks = plan_stacks(jobs, 4)
    assert sorted(len(s) for s in stacks) == [3, 3, 3, 3, 4, 4]
    for stack in stacks:
        assert len({j.spec.rule.name for j in stack}) == 1
    dtp = [j for j in jobs if j.spec.rule.name == "dtp"]
    assert [j for s in stacks for j in s if j.spec.rule.name == "dtp"] == dtp
    assert plan_stacks(jobs, 1) == [[j] for j in jobs]
    assert plan_stacks(jobs, 64) == [[j for j in jobs if j.spec.rule.name == r] for r in ("dtp", "fa")]


def test_jobs_that_cannot_stack_or_start_apart_run_alone() -> None:
    jobs = expand(GridSpec(name="g", base=BASE, axes={"seed": [0, 1, 2, 3]}))
    alone = {jobs[1].job_id}
    stacks = plan_stacks(jobs, 4, start=lambda j: 5 if j is jobs[3] else 0,
                         stackable=lambda j: "no stacked form" if j.job_id in alone else None)
    assert stacks == [[jobs[0], jobs[2]], [jobs[1]], [jobs[3]]]
    with pytest.raises(ValueError, match="at least one"):
        plan_stacks(jobs, 0)
