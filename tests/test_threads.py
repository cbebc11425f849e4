"""CPU threads per job (bioscale.threads): chosen from the job's size within the executor's share of the cores
(affinity and Slurm's cpus_per_task respected), recorded in the result, and without changing the numbers of
an fc job (MKL's strict reproducibility mode, set by ``import bioscale``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bioscale import threads
from bioscale.data.base import DataShape
from bioscale.executors import InlineExecutor, LocalExecutor
from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.spec import JobResult
from bioscale.store import Store

REPO = Path(__file__).resolve().parent.parent


def _fc_mnist5k(**train) -> Job:
    spec = resolve({"dataset": {"name": "mnist-5k", "params": {"subset": 320}}, "arch": "fc", "rule": "fa",
                    "train": {"epochs": 2, "batch_size": 32, "num_workers": 0, **train}})
    return Job("t", spec, "fa fc mnist-5k s0")


def _numbers(job_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]


def test_fc_job_gives_identical_metrics_with_1_and_2_threads(tmp_path: Path) -> None:
    """2 epochs of 10 steps of fa on mnist-5k: losses, errors and alignment angles bit for bit. Without
    MKL_CBWR=AUTO,STRICT the first layer's gradient already differs in its last bits between 1 and 2 threads."""
    job = _fc_mnist5k()
    for n in (1, 2):
        (result,) = InlineExecutor(threads=n).run([job], Store(tmp_path / str(n)))
        assert result.status == "done" and result.provenance is not None and result.provenance.threads == n
    one, two = (_numbers(tmp_path / n / "t" / job.job_id) for n in "12")
    assert one == two and one[-1]["diagnostics"]  # the angles too


def test_mkl_reproducibility_mode_is_set_unless_the_user_chose_one() -> None:
    code = "import os, bioscale; print(os.environ['MKL_CBWR'])"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, check=True)
    assert run.stdout.strip() == "AUTO,STRICT"
    run = subprocess.run([sys.executable, "-c", code], env={**env, "MKL_CBWR": "COMPATIBLE"}, capture_output=True,
                         text=True, cwd=REPO, check=True)
    assert run.stdout.strip() == "COMPATIBLE"


def test_small_jobs_get_few_threads_and_big_ones_their_share() -> None:
    mnist = DataShape("mnist", (1, 28, 28), 10, 4000, 1000)
    cifar = DataShape("cifar10", (3, 32, 32), 10, 50000, 10000)
    budget = threads.Budget(8)
    fc = _fc_mnist5k().spec
    flops = threads.step_flops(fc, mnist)
    # 784-256x5-10 at batch 32: about 2 * 0.46 M multiply-adds per example (a wrong count would show here)
    assert flops == pytest.approx(32 * 2 * (784 * 256 + 4 * 256 * 256 + 256 * 10), rel=0.01)
    assert threads.choose(budget, flops) == 1
    conv = resolve({"dataset": {"name": "synthetic", "params": {"shape": [3, 32, 32]}}, "arch": "conv", "rule": "bp",
                    "train": {"batch_size": 128}})
    assert threads.choose(budget, threads.step_flops(conv, cifar)) == 8  # its whole share
    assert threads.choose(threads.Budget(8, fixed=True), flops) == 8  # --threads is used as given
    assert threads.choose(budget, flops, on_cpu=False) == 8  # on a GPU: the share
    assert threads.choose(budget, None) == 8  # an arch the meta device cannot count


def test_choosing_draws_nothing_from_the_generators() -> None:
    state = torch.get_rng_state()
    threads.step_flops(_fc_mnist5k().spec, DataShape("mnist", (1, 28, 28), 10, 4000, 1000))
    assert torch.equal(state, torch.get_rng_state())


def test_budget_respects_affinity_and_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert threads.cpus_available() == 3
    assert threads.share(1) == threads.Budget(3)
    assert threads.share(2) == threads.Budget(1) and threads.share(8) == threads.Budget(1)
    assert threads.share(1, cpus_per_task=2) == threads.Budget(2)
    assert threads.share(1, cpus_per_task=16) == threads.Budget(3)  # not more than the task may run on
    assert threads.share(4, threads=5) == threads.Budget(5, fixed=True)
    assert LocalExecutor(workers=3).threads_per_job(3) == 1


def test_budget_block_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    with threads.budget(threads.Budget(2)):
        assert torch.get_num_threads() == 2 and threads.current_budget() == threads.Budget(2)
    assert torch.get_num_threads() == before


def test_results_from_before_threads_were_recorded_still_load() -> None:
    old = {"job_id": "abc", "grid": "g", "status": "done", "provenance": {
        "bioscale_version": "0.1.0", "python_version": "3.11", "hostname": "h", "started_at": "2026-01-01"}}
    assert JobResult.model_validate(old).provenance.threads is None


def test_a_pool_worker_chooses_by_size_within_its_share(tmp_path: Path, tiny_grid: dict) -> None:
    """A local worker's share is all the CPUs (one worker); the tiny job takes 1 thread of it, and says so."""
    if threads.cpus_available() < 2:
        pytest.skip("needs 2 CPUs to tell a share from a choice")
    job = Job("tiny", resolve({**tiny_grid["base"], "train": {"epochs": 1, "batch_size": 64}}), "bp fc synthetic s0")
    (result,) = LocalExecutor(workers=1).run([job], Store(tmp_path))
    assert result.status == "done" and result.provenance is not None and result.provenance.threads == 1
    (fixed,) = LocalExecutor(workers=1, threads=2).run([job], Store(tmp_path / "fixed"))
    assert fixed.provenance is not None and fixed.provenance.threads == 2
