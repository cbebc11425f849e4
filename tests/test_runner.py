"""The Python API (``bioscale.run_grid``, ``bioscale.load_results``) and the events a run emits."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import bioscale
from bioscale import runner
from bioscale.errors import BioscaleError
from bioscale.events import JobFinished, JobProgress, JobStarted
from bioscale.executors import InlineExecutor, LocalExecutor
from bioscale.spec import ExecutorSpec, GridSpec

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["grid", "job_id", "rule", "schedule", "arch", "dataset", "seed", "status", "epochs", "train_error",
           "test_error", "top5_error", "epoch_time_s", "wall_time_s", "paper_test_error", "delta"]


def _write(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _assert_ordered(events: list, job_ids: set[str]) -> None:
    """Per job: one JobStarted, then JobProgress (at least one), then one JobFinished."""
    assert {e.job_id for e in events} == job_ids
    for job_id in job_ids:
        mine = [e for e in events if e.job_id == job_id]
        assert isinstance(mine[0], JobStarted) and isinstance(mine[-1], JobFinished), mine
        assert len(mine) > 2 and all(isinstance(e, JobProgress) for e in mine[1:-1])
    for event in events:
        assert pickle.loads(pickle.dumps(event)) == event


def test_run_grid_runs_then_skips_and_loads_results(tmp_path: Path, tiny_grid: dict) -> None:
    path, results = _write(tmp_path, tiny_grid), tmp_path / "results"
    events: list = []
    summary = bioscale.run_grid(path, results=results, overrides=["train.epochs=1"], on_event=events.append)
    assert summary.grid == "tiny" and summary.results_dir == results / "tiny"
    assert len(summary.jobs) == 4 and summary.skipped == 0 and summary.counts == {"done": 4}
    assert summary.failed == [] and {r.job_id for r in summary.results} == {j.job_id for j in summary.jobs}
    _assert_ordered(events, {j.job_id for j in summary.jobs})
    assert [e.epoch for e in events if isinstance(e, JobProgress)][-1] == 1

    specs = sorted((results / "tiny").glob("*/spec.json"))
    for p in specs:  # as written by an older release: a finished job's record must stay exactly as it is
        p.write_text(p.read_text().replace('"epochs": 1', '"epochs": 1 '))
    older = {p: p.read_bytes() for p in specs}
    again = bioscale.run_grid(path, results=results, overrides={"train.epochs": 1})  # the same jobs
    assert again.skipped == 4 and again.results == [] and again.counts == {}
    assert {p: p.read_bytes() for p in specs} == older and len(specs) == 4

    frame = bioscale.load_results(results)
    assert len(frame) == 4 and set(COLUMNS) <= set(frame.columns)
    assert set(frame["status"]) == {"done"} and set(frame["rule"]) == {"bp", "fa"}
    assert set(frame["job_id"]) == {j.job_id for j in summary.jobs}
    assert len(bioscale.load_results(results, grid="tiny")) == 4
    with pytest.raises(BioscaleError, match="No results for grid 'nope'"):
        bioscale.load_results(results, grid="nope")


def test_local_executor_events_and_a_grid_object(tmp_path: Path, tiny_grid: dict) -> None:
    grid = GridSpec.model_validate(tiny_grid)
    events: list = []
    summary = runner.run_grid(grid, results=tmp_path, overrides=["train.epochs=1"], executor="local",
                              workers=2, on_event=events.append)
    assert summary.counts == {"done": 4}
    _assert_ordered(events, {j.job_id for j in summary.jobs})
    assert all((tmp_path / "tiny" / j.job_id / "result.json").is_file() for j in summary.jobs)


def test_a_failed_job_is_in_the_summary_not_raised(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["axes"] = {"seed": [0]}
    summary = bioscale.run_grid(_write(tmp_path, tiny_grid), tmp_path / "r",
                                ["train.epochs=1", "train.device=cuda:9"], preflight=False)  # no such device
    assert summary.counts == {"failed": 1} and len(summary.failed) == 1 and summary.failed[0].error


def test_preflight_refuses_a_missing_device_before_anything_runs(tmp_path: Path, tiny_grid: dict) -> None:
    from bioscale.preflight import PreflightError

    with pytest.raises(PreflightError, match="cuda:9"):
        bioscale.run_grid(_write(tmp_path, tiny_grid), tmp_path / "r", ["train.device=cuda:9"])
    assert not (tmp_path / "r").exists()


def test_bad_input_raises_before_anything_is_written(tmp_path: Path, tiny_grid: dict) -> None:
    results = tmp_path / "results"
    tiny_grid["axes"]["rule.name"] = ["bp", "feedback-alignment"]
    with pytest.raises(BioscaleError, match="Unknown rule 'feedback-alignment'"):
        bioscale.run_grid(_write(tmp_path, tiny_grid), results)
    tiny_grid["axes"]["rule.name"] = ["bp"]
    with pytest.raises(BioscaleError, match="Unknown executor 'slurmm'"):
        bioscale.run_grid(_write(tmp_path, tiny_grid), results, executor="slurmm")
    with pytest.raises(BioscaleError, match="takes the parameters"):
        bioscale.run_grid(_write(tmp_path, tiny_grid), results, executor=ExecutorSpec(name="inline",
                                                                                         params={"workers": 2}))
    assert not results.exists()


def test_plan_writes_nothing(tmp_path: Path, tiny_grid: dict) -> None:
    planned = runner.plan(_write(tmp_path, tiny_grid), tmp_path / "results", ["seed=3"])
    assert len(planned.jobs) == 2 and planned.todo == planned.jobs and planned.skipped == 0
    assert {j.spec.seed for j in planned.jobs} == {3}
    assert planned.results_dir == tmp_path / "results" / "tiny" and not (tmp_path / "results").exists()


def test_choose_executor(tiny_grid: dict) -> None:
    grid = GridSpec.model_validate(tiny_grid)
    assert isinstance(runner.choose_executor(grid), InlineExecutor)
    local = runner.choose_executor(grid, workers=3)
    assert isinstance(local, LocalExecutor) and local.workers == 3
    grid = GridSpec.model_validate({**tiny_grid, "executor": {"name": "local", "params": {"workers": 2}}})
    assert runner.choose_executor(grid).workers == 2
    assert runner.choose_executor(grid, threads=1).workers == 2  # the grid's params stay, --threads on top
    assert isinstance(runner.choose_executor(grid, "inline"), InlineExecutor)
    mine = InlineExecutor()
    assert runner.choose_executor(grid, mine) is mine
    with pytest.raises(BioscaleError, match="give them to the executor"):
        runner.choose_executor(grid, mine, workers=2)


def test_the_api_is_at_the_top_and_import_is_torch_free() -> None:
    assert bioscale.run_grid is runner.run_grid and bioscale.load_results is runner.load_results
    assert {"run_grid", "load_results"} <= set(dir(bioscale))
    with pytest.raises(AttributeError):
        bioscale.no_such_thing  # noqa: B018
    code = ("import sys, bioscale, bioscale.runner, bioscale.cli; bioscale.run_grid; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
