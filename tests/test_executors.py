from pathlib import Path

import pytest
import yaml

from bioscale.errors import BioscaleError
from bioscale.events import JobFinished, JobProgress, JobStarted
from bioscale.executors import InlineExecutor, LocalExecutor, make_executor
from bioscale.grid import expand, load_grid, parse_set
from bioscale.spec import ExecutorSpec
from bioscale.store import Store


def _jobs(tmp_path: Path, grid: dict, sets: list[str] | None = None):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    return expand(load_grid(path), parse_set(sets or ["train.epochs=1"]))


@pytest.mark.parametrize("executor", [InlineExecutor(), LocalExecutor(workers=2)], ids=["inline", "local"])
def test_a_failed_job_does_not_stop_the_others(tmp_path: Path, tiny_grid: dict, executor) -> None:
    jobs = _jobs(tmp_path, tiny_grid)
    broken = _jobs(tmp_path, tiny_grid, ["train.epochs=1", "seed=99", "train.device=cuda:9"])[0]  # no such device
    store = Store(tmp_path / "results")
    events: list = []
    results = executor.run([broken, *jobs], store, events.append)
    assert sorted(r.status for r in results) == ["done"] * 4 + ["failed"]
    finished = {e.job_id: e for e in events if isinstance(e, JobFinished)}
    assert finished[broken.job_id].status == "failed" and finished[broken.job_id].error
    assert sum(isinstance(e, JobStarted) for e in events) == 5
    assert {e.job_id for e in events if isinstance(e, JobProgress)} == {j.job_id for j in jobs}
    assert broken.job_id not in {j.job_id for j in jobs}
    assert store.job_dir(broken.grid, broken.job_id).status() == "failed"
    for job in jobs:
        assert store.job_dir(job.grid, job.job_id).status() == "done"


def test_make_executor() -> None:
    assert isinstance(make_executor(None), InlineExecutor)
    local = make_executor(ExecutorSpec(name="local", params={"workers": 3}))
    assert isinstance(local, LocalExecutor) and local.workers == 3
    with pytest.raises(BioscaleError, match="Unknown executor 'slurmm'"):
        make_executor(ExecutorSpec(name="slurmm"))


def test_packed_gpus_pin_each_worker_and_keep_k_jobs_per_gpu(tmp_path: Path, tiny_grid: dict, monkeypatch) -> None:
    """--jobs-per-gpu K: K workers per GPU, each pinned with CUDA_VISIBLE_DEVICES before torch starts (two
    pretend GPUs here: the pinned workers then run on the CPU, as on any machine without CUDA)."""
    import bioscale.executors as ex

    monkeypatch.setattr(ex, "visible_gpus", lambda: ["3", "5"])
    local = make_executor(ExecutorSpec(name="local", params={"jobs_per_gpu": 2}))
    assert local.layout() == ["3", "3", "5", "5"] and local.threads_per_job(4) >= 1
    jobs = _jobs(tmp_path, tiny_grid)
    store = Store(tmp_path / "results")
    results = local.run(jobs, store)
    assert [r.status for r in results] == ["done"] * 4
    pins = sorted(r.provenance.visible_devices for r in results)
    assert pins == ["3", "3", "5", "5"]
    capped = ex.LocalExecutor(workers=3, jobs_per_gpu=2)
    assert capped.layout() == ["3", "3", "5"]
    monkeypatch.setattr(ex, "visible_gpus", lambda: [])
    assert ex.LocalExecutor(workers=2, jobs_per_gpu=4).layout() == [None, None]
