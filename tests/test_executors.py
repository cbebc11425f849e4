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
    local = make_executor(ExecutorSpec(name="local", params={"jobs_per_gpu": 2, "stack": 1}))  # one job a slot
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


def _ddp(tmp_path: Path, tiny_grid: dict, nproc: int):
    tiny_grid["axes"] = {"seed": [7]}
    return _jobs(tmp_path, tiny_grid, ["train.epochs=1", f"train.distributed.nproc_per_node={nproc}"])[0]


def test_a_multi_process_job_takes_whole_gpus(tmp_path: Path, tiny_grid: dict) -> None:
    from bioscale.executors import take_slots

    single = _jobs(tmp_path, tiny_grid)[0]
    ddp = _ddp(tmp_path, dict(tiny_grid), 2)
    layout = ["0", "0", "1", "1", "2", "2"]  # 3 GPUs, 2 jobs per GPU
    assert take_slots(layout, [0, 1, 2, 3, 4, 5], ddp) == [0, 1, 2, 3]  # every slot of two GPUs
    assert take_slots(layout, [1, 2, 3, 4, 5], ddp) == [2, 3, 4, 5]  # GPU 0 is partly busy
    assert take_slots(layout, [1, 3, 4, 5], ddp) is None  # only one whole GPU free: wait
    assert take_slots(layout, [3], single) == [3] and take_slots(layout, [], single) is None
    assert take_slots(["0", "1"], [0, 1], _ddp(tmp_path, dict(tiny_grid), 3)) == []  # never fits here
    assert take_slots([None, None], [1], ddp) == [1]  # on the CPU its ranks share one slot's cores


@pytest.mark.slow
def test_packed_pool_runs_a_ddp_job_on_whole_gpus_alone(tmp_path: Path, tiny_grid: dict, monkeypatch) -> None:
    import json

    import bioscale.executors as ex

    monkeypatch.setattr(ex, "visible_gpus", lambda: ["0", "1"])  # pretend GPUs: the ranks run on gloo/CPU
    ddp = _ddp(tmp_path, dict(tiny_grid), 2)
    too_big = _ddp(tmp_path, dict(tiny_grid, name="big"), 3)
    singles = _jobs(tmp_path, tiny_grid)[:2]
    store = Store(tmp_path / "results")
    results = ex.LocalExecutor(jobs_per_gpu=2).run([ddp, too_big, *singles], store)
    by_id = {r.job_id: r for r in results}
    assert by_id[ddp.job_id].status == "done" and by_id[ddp.job_id].provenance.visible_devices == "0,1"
    assert by_id[too_big.job_id].status == "failed" and "asks for 3 processes" in by_id[too_big.job_id].error
    assert {by_id[j.job_id].status for j in singles} == {"done"}

    def span(job) -> tuple[float, float]:
        log = [json.loads(line) for line in (store.job_dir(job.grid, job.job_id).path / "claims.log").open()]
        return log[0]["time"], log[-1]["time"]

    _start, end = span(ddp)
    assert all(span(j)[0] >= end for j in singles)  # nothing else ran on its GPUs meanwhile
