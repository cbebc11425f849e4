"""A fixed small store, written by hand (no training), for golden report outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bioscale.grid import resolve
from bioscale.spec import EpochMetrics, JobResult
from bioscale.store import Store

# (rule, schedule, seed, status, per-epoch (train_error, test_error), error)
JOBS = [
    ("bp", None, 0, "done", [(5.0, 6.0), (1.0, 2.5), (0.5, 3.0)], None),
    ("bp", None, 1, "done", [(4.0, 5.0), (0.8, 2.7), (0.2, 2.9)], None),
    ("fa", None, 0, "done", [(7.0, 8.0), (3.0, 4.0)], None),
    ("dtp", "alternating", 0, "diverged", [(50.0, 60.0)], "training loss is nan in epoch 2"),
    ("sdtp", "parallel", 0, "failed", [], "DataError: mnist-5k is missing"),
    ("dfa", None, 0, "pending", [], None),
]


@pytest.fixture
def fixed_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "results")
    for rule, schedule, seed, status, curve, error in JOBS:
        params = {"schedule": schedule} if schedule else {}
        spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": {"name": rule, "params": params},
                        "seed": seed, "train": {"epochs": len(curve) if status == "done" else 3}})
        jdir = store.job_dir("table1-mini", spec.job_id())
        jdir.write_spec("table1-mini", spec)
        jdir.write_metrics([EpochMetrics(epoch=i + 1, train_loss=1.0, train_error=tr, test_error=te,
                                         top5_error=te / 10, epoch_time_s=1.0 + i, lr=1e-3,
                                         diagnostics={"angle_grad_bp/layers.0.op": 80.0 - 10 * i,
                                                      "angle_w_b/layers.0.op": 85.0 - 5 * i} if rule == "fa" else {})
                            for i, (tr, te) in enumerate(curve)])
        if status != "pending":
            jdir.write_result(JobResult(job_id=spec.job_id(), grid="table1-mini", status=status,
                                        epochs=len(curve), wall_time_s=10.0, error=error))
    return store
