"""``dataset.params.validation`` (issue 15): every small dataset holds a fixed stratified part of its training
set out, and the trainer records the validation error of every epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bioscale.catalog import DATASETS
from bioscale.data import LoaderSettings, load_data
from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.spec import DatasetSpec, EpochMetrics, JobResult
from bioscale.store import Store
from bioscale.train import run_job

BUNDLED = [n for n, r in DATASETS.items() if "validation" in r.params.model_fields
           and ("bundled" in r.tags or n == "synthetic")]


def _rows(loader) -> torch.Tensor:
    return torch.cat([x.flatten(1) for x, _ in loader])


@pytest.mark.parametrize("name", BUNDLED)
def test_validation_is_a_fixed_stratified_holdout_of_the_training_set(name: str, ctx: LoaderSettings) -> None:
    full = load_data(DatasetSpec(name=name), ctx)
    assert full.validation is None
    n = 100
    data = load_data(DatasetSpec(name=name, params={"validation": n}), ctx)
    assert data.validation is not None and data.info.train_size == full.info.train_size - n
    assert data.info.test_size == full.info.test_size  # the test set is never touched
    labels = torch.cat([y for _, y in data.validation])
    assert len(labels) == n and labels.bincount().min() >= n // data.info.num_classes - 1  # stratified
    held, train, everything = _rows(data.validation), _rows(data.train_eval), _rows(full.train_eval)
    assert torch.equal(torch.cat([held, train]).sort(0).values, everything.sort(0).values)  # a partition
    again = load_data(DatasetSpec(name=name, params={"validation": n}), ctx)
    assert torch.equal(_rows(again.validation), held)  # fixed: the same images every time


def test_jobs_record_val_error_every_epoch_and_the_best_in_the_result(tmp_path: Path) -> None:
    spec = resolve({"dataset": {"name": "synthetic", "params": {"train_size": 256, "test_size": 64,
                                                                "shape": [1, 8, 8], "validation": 64}},
                    "arch": {"name": "fc", "params": {"hidden": [16]}}, "rule": "bp",
                    "train": {"epochs": 3, "batch_size": 32, "device": "cpu", "num_workers": 0}})
    result = run_job(Job("g", spec, "bp"), Store(tmp_path))
    metrics = Store(tmp_path).job_dir("g", spec.job_id()).read_metrics()
    assert result.status == "done" and all(m.val_error is not None and m.val_loss is not None for m in metrics)
    best = min(metrics, key=lambda m: m.val_error)
    assert (result.val_error, result.val_epoch) == (best.val_error, best.epoch)
    assert all(m.val_error in {100 * k / 64 for k in range(65)} for m in metrics)  # an error over 64 images


def test_results_written_before_validation_existed_still_load() -> None:
    old = {"epoch": 1, "train_loss": 0.5, "train_error": 10.0, "test_error": 12.0, "epoch_time_s": 1.0}
    assert EpochMetrics.model_validate(old).val_error is None
    assert JobResult.model_validate({"job_id": "x", "grid": "g", "status": "done"}).val_error is None


def test_validation_keeps_old_job_ids() -> None:
    job = {"dataset": "mnist-5k", "arch": "fc", "rule": "bp"}
    plain = resolve(job)
    assert plain.dataset.params["validation"] is None
    held = resolve({**job, "dataset": {"name": "mnist-5k", "params": {"validation": 1000}}})
    assert held.job_id() != plain.job_id()
