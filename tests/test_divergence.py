"""Divergence is a result, a bug is a failure: training that raises because its numbers overflowed is
``diverged``; a finite loss, however large, is ``done``; an ordinary error stays ``failed``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.store import Store
from bioscale.train import overflowed, run_job

BASE = {
    "dataset": {"name": "synthetic", "params": {"train_size": 128, "test_size": 64, "shape": [1, 8, 8]}},
    "arch": {"name": "fc", "params": {"hidden": [16]}},
    "rule": "bp",
    "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 128},
}


def _job(**sets) -> Job:
    return Job("div", resolve({**BASE, **sets}), "test")


@pytest.mark.parametrize(("rule", "optim"), [("bp", "adam"), ("bp", "sgd"), ("fa", "adam")])
def test_training_that_raises_on_overflow_is_diverged(tmp_path: Path, rule: str, optim: str) -> None:
    """lr 1e300: the per-parameter loop raises "value cannot be converted to type float without overflow" in
    the step; the fused step (the default) does not raise, and the nan loss after it is the divergence."""
    result = run_job(_job(rule=rule, optim={"name": optim, "lr": 1e300, "impl": "loop"}), Store(tmp_path))
    assert result.status == "diverged", result.error
    assert "overflow" in (result.error or "") and "epoch 1" in (result.error or "")
    assert "Traceback" not in (result.error or "")
    fused = run_job(_job(rule=rule, optim={"name": optim, "lr": 1e300}), Store(tmp_path / "fused"))
    assert fused.status == "diverged", fused.error
    assert "epoch 1" in (fused.error or "") and "Traceback" not in (fused.error or "")


def test_huge_but_finite_loss_is_done(tmp_path: Path) -> None:
    """Adam at lr 1e6 learns nothing and its loss is huge, but finite: a (bad) result, not a divergence."""
    result = run_job(_job(optim={"name": "adam", "lr": 1e6}), Store(tmp_path))
    assert result.status == "done", result.error
    metrics = Store(tmp_path).job_dir("div", _job(optim={"name": "adam", "lr": 1e6}).job_id).read_metrics()
    assert math.isfinite(metrics[0].train_loss) and metrics[0].train_loss > 10
    assert result.test_error is not None and result.test_error > 50


def test_what_counts_as_overflow() -> None:
    model = torch.nn.Linear(2, 2)
    assert overflowed(OverflowError("int too large to convert to float"))
    assert overflowed(FloatingPointError("overflow encountered"))
    assert overflowed(RuntimeError("value cannot be converted to type float without overflow"))
    assert overflowed(RuntimeError("Function 'AddmmBackward0' returned nan values in its 0th output."))
    assert not overflowed(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)"), model)
    assert not overflowed(ValueError("overflow"))  # not raised by the numbers: a bug
    assert not overflowed(torch.OutOfMemoryError("CUDA out of memory"), model)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    assert overflowed(RuntimeError("some kernel failed"), model)  # the parameters already blew up


def test_an_ordinary_error_in_training_stays_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bioscale.rules.base import BackwardRule

    def broken(self, x, y):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x2)")

    monkeypatch.setattr(BackwardRule, "train_step", broken)
    result = run_job(_job(), Store(tmp_path))
    assert result.status == "failed" and "shapes cannot be multiplied" in (result.error or "")
