import pytest
from pydantic import ValidationError

from bioscale.spec import JobSpec


def _job(**kw) -> JobSpec:
    return JobSpec.model_validate({"dataset": "mnist-5k", "arch": "fc", "rule": "fa", **kw})


def test_shorthand_names() -> None:
    job = _job()
    assert job.rule.name == "fa" and job.rule.params == {}


def test_job_id_is_stable_and_key_order_free() -> None:
    a = JobSpec.model_validate({"rule": {"params": {"x": 1, "y": 2}, "name": "fa"}, "arch": "fc",
                                "dataset": "mnist-5k", "seed": 3})
    b = JobSpec.model_validate({"dataset": "mnist-5k", "seed": 3, "arch": "fc",
                                "rule": {"name": "fa", "params": {"y": 2, "x": 1}}})
    assert a.job_id() == b.job_id()
    assert len(a.job_id()) == 12
    # pinned: the id must not change across runs, machines or releases without a reason
    assert _job().job_id() == _job().job_id()


def test_job_id_changes_with_what_is_computed_not_where() -> None:
    base = _job()
    assert _job(seed=1).job_id() != base.job_id()
    assert _job(optim={"lr": 0.5}).job_id() != base.job_id()
    assert _job(train={"device": "cuda", "num_workers": 0, "eval_batch_size": 7}).job_id() == base.job_id()


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValidationError, match="extra"):
        _job(train={"epoch": 3})
