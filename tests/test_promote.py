"""Successive halving (issue 15): rungs promote exactly the expected jobs, decisions are recorded and stable,
and a promoted job continues from its checkpoint to end as if it had run its whole budget at once."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioscale import promote
from bioscale.errors import BioscaleError, GridError
from bioscale.grid import expand, load_grid
from bioscale.job import Job
from bioscale.runner import plan, run_grid
from bioscale.spec import EpochMetrics, JobResult
from bioscale.store import Store


def _grid(tmp_path: Path, tiny_grid: dict, n: int = 6, rungs: list[int] | None = None, keep: Any = "1/3",
          epochs: int = 6, **base: Any) -> Path:
    data = dict(tiny_grid)
    data["base"] = {**tiny_grid["base"], "train": {**tiny_grid["base"]["train"], "epochs": epochs}, **base}
    data["base"]["dataset"] = {"name": "synthetic", "params": {"train_size": 256, "test_size": 64,
                                                               "shape": [1, 8, 8], "validation": 64}}
    data["axes"] = {"rule.name": ["bp", "fa"]}
    data["search"] = {"n": n, "seed": 1, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}
    data["promote"] = {"metric": "val_error", "rungs": rungs or [2, 4], "keep": keep}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _fake(store: Store, job: Job, val: list[float], test: list[float] | None = None, status: str = "pending") -> None:
    """A job's folder as the trainer leaves it after len(val) epochs."""
    jdir = store.job_dir(job.grid, job.job_id)
    jdir.write_spec(job.grid, job.spec)
    test = test or [50.0] * len(val)
    jdir.write_metrics([EpochMetrics(epoch=i + 1, train_loss=1.0, train_error=10.0, test_error=t, val_error=v,
                                     epoch_time_s=0.1) for i, (v, t) in enumerate(zip(val, test, strict=True))])
    jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status=status, epochs=len(val)))  # type: ignore[arg-type]


def test_rungs_promote_exactly_the_best_by_validation_and_never_by_test(tmp_path: Path, tiny_grid: dict) -> None:
    grid = load_grid(_grid(tmp_path, tiny_grid))
    jobs = expand(grid)
    store = Store(tmp_path / "results")
    bp = [j for j in jobs if j.spec.rule.name == "bp"]
    fa = [j for j in jobs if j.spec.rule.name == "fa"]
    assert len(bp) == len(fa) == 6
    todo, groups = promote.advance(grid, jobs, store)
    assert len(groups) == 2 and {j.stop_after for j in todo} == {2} and len(todo) == 12  # everyone to rung 2

    # best val error over the first 2 epochs; the test errors would pick the opposite jobs
    vals = [30.0, 12.0, 40.0, 12.0, 8.0, 90.0]
    for job, v in zip(bp, vals, strict=True):
        _fake(store, job, [v + 5, v, 1.0], test=[100 - v, 100 - v, 0.0])  # epoch 3 (beyond the rung) ignored
    for job in fa[:5]:
        _fake(store, job, [20.0, 20.0])
    # fa's sixth job failed before the rung: its group waits for it
    _fake(store, fa[5], [20.0], status="failed")
    todo, groups = promote.advance(grid, jobs, store)
    (bp_group,) = [g for g in groups if g.label.startswith("bp")]
    assert bp_group.stage == 1
    tied = sorted([bp[1].job_id, bp[3].job_id])
    assert {j.job_id for j in bp_group.alive} == {bp[4].job_id, tied[0]}  # 6 * 1/3 = 2 kept; a tie by job id
    assert {j.job_id: j.stop_after for j in todo if j.spec.rule.name == "bp"} == {bp[4].job_id: 4, tied[0]: 4}
    assert [j.job_id for j in todo if j.spec.rule.name == "fa"] == [fa[5].job_id]  # retried, to rung 2

    recorded = json.loads((tmp_path / "results" / "tiny" / promote.DECISIONS).read_text())
    (entry,) = recorded["decisions"]
    assert entry["rung"] == 2 and entry["metric"] == "val_error" and entry["kept"] == [bp[4].job_id, tied[0]]
    assert [c["value"] for c in entry["candidates"]] == [8.0, 12.0, 12.0, 30.0, 40.0, 90.0]

    # stable: a job's files changing later (or a rerun) does not move a recorded decision
    _fake(store, bp[5], [0.0, 0.0])
    _, groups_again = promote.advance(grid, jobs, store)
    assert [j.job_id for j in groups_again[0].alive] == [j.job_id for j in groups[0].alive]

    # rung 4: of the two, one continues to the whole budget (floor(2/3) = 0, at least 1)
    _fake(store, bp[4], [13.0, 8.0, 9.0, 9.0])
    _fake(store, store_job := next(j for j in bp if j.job_id == tied[0]), [17.0, 12.0, 7.0, 11.0])
    todo, groups = promote.advance(grid, jobs, store)
    assert {j.job_id: j.stop_after for j in todo if j.spec.rule.name == "bp"} == {store_job.job_id: None}


def test_a_diverged_candidate_ranks_last_and_does_not_block(tmp_path: Path, tiny_grid: dict) -> None:
    grid = load_grid(_grid(tmp_path, tiny_grid, n=3, keep=2))
    store = Store(tmp_path / "r")
    jobs = [j for j in expand(grid) if j.spec.rule.name == "bp"]
    _fake(store, jobs[0], [1.0], status="diverged")
    _fake(store, jobs[1], [50.0, 40.0])
    _fake(store, jobs[2], [60.0, 45.0])
    promote.advance(grid, jobs, store)
    entry = promote.Decisions(tmp_path / "r" / "tiny").get(promote.group_of(jobs[0], ["optim.lr"]), 2)
    assert entry is not None and entry["kept"] == [jobs[1].job_id, jobs[2].job_id]
    assert entry["candidates"][-1] == {"job_id": jobs[0].job_id, "label": jobs[0].label, "value": None}


def test_a_damaged_decisions_file_is_refused_not_recomputed(tmp_path: Path, tiny_grid: dict) -> None:
    grid = load_grid(_grid(tmp_path, tiny_grid, n=2))
    (tmp_path / "r" / "tiny").mkdir(parents=True)
    (tmp_path / "r" / "tiny" / promote.DECISIONS).write_text("{not json")
    with pytest.raises(BioscaleError, match=r"cannot be read.*restore it from a backup, or move it away"):
        promote.advance(grid, expand(grid), Store(tmp_path / "r"))


@pytest.mark.parametrize(("base", "expected"), [
    ({"dataset": {"name": "synthetic", "params": {"train_size": 256}}}, "needs a validation set"),
    ({"train": {"epochs": 3}}, "rung 4 is beyond the job's budget of train.epochs=3"),
])
def test_what_halving_needs_is_checked_before_anything_runs(tmp_path: Path, tiny_grid: dict, base: dict,
                                                            expected: str) -> None:
    path = _grid(tmp_path, tiny_grid)
    data = yaml.safe_load(path.read_text())
    for key, value in base.items():
        data["base"][key] = {**data["base"][key], **value} if key == "train" else value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(GridError, match=expected):
        expand(load_grid(path))


@pytest.mark.parametrize("rule", ["bp", "dtp"])
def test_a_promoted_job_ends_as_if_it_had_run_its_whole_budget(tmp_path: Path, rule: str) -> None:
    """mnist-5k subset, a tiny net: stopped at the rung, then continued from the checkpoint, every number of
    every epoch (timings aside) equals an uninterrupted run's."""
    from bioscale.grid import resolve
    from bioscale.train import run_job

    spec = resolve({"dataset": {"name": "mnist-5k", "params": {"subset": 400, "validation": 200}},
                    "arch": {"name": "fc", "params": {"hidden": [24, 24]}}, "rule": rule,
                    "optim": {"lr": 3e-3}, "train": {"epochs": 4, "batch_size": 50, "device": "cpu",
                                                     "num_workers": 0}, "seed": 5})
    job = Job("g", spec, rule)
    halved, whole = Store(tmp_path / "halved"), Store(tmp_path / "whole")
    paused = run_job(dataclasses.replace(job, stop_after=2), halved)
    assert paused.status == "pending" and paused.epochs == 2 and "paused after epoch 2 of 4" in (paused.error or "")
    assert len(halved.job_dir("g", job.job_id).read_metrics()) == 2
    done = run_job(job, halved)
    reference = run_job(job, whole)
    assert done.status == reference.status == "done" and done.epochs == 4

    def numbers(store: Store) -> list[dict[str, Any]]:
        return [m.model_dump(exclude={"epoch_time_s"}) for m in store.job_dir("g", job.job_id).read_metrics()]

    assert numbers(halved) == numbers(whole)
    assert all(m["val_error"] is not None for m in numbers(whole))
    assert (done.val_error, done.test_error) == (reference.val_error, reference.test_error)


def test_run_grid_halves_to_one_and_a_rerun_does_nothing(tmp_path: Path, tiny_grid: dict) -> None:
    path = _grid(tmp_path, tiny_grid, n=4, rungs=[1], keep=1, epochs=2)
    results = tmp_path / "results"
    first = run_grid(path, results, preflight=False)
    store = Store(results)
    states = {j.job_id: store.job_dir("tiny", j.job_id).inspect() for j in first.jobs}
    done = [i for i, s in states.items() if s.status == "done"]
    paused = [i for i, s in states.items() if s.status == "pending"]
    assert len(done) == 2 and len(paused) == 6  # one per rule survives rung 1 and runs its 2 epochs
    assert all(len(states[i].metrics) == 1 for i in paused) and all(len(states[i].metrics) == 2 for i in done)
    decisions = json.loads((results / "tiny" / promote.DECISIONS).read_text())["decisions"]
    assert sorted(e["kept"][0] for e in decisions) == sorted(done)
    for entry in decisions:  # the kept job had the lowest val_error at epoch 1
        assert entry["candidates"][0]["job_id"] == entry["kept"][0]
        assert entry["candidates"][0]["value"] == min(c["value"] for c in entry["candidates"])
    assert plan(path, results).todo == []
    assert run_grid(path, results, preflight=False).results == []


def test_the_rung_stop_travels_to_torchrun_workers(tmp_path: Path, tiny_grid: dict) -> None:
    """A distributed job's ranks read the job from a JSON file: the stop must survive it."""
    from bioscale.distributed import job_payload
    from bioscale.worker import read_job

    job = dataclasses.replace(expand(load_grid(_grid(tmp_path, tiny_grid)))[0], stop_after=2)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_payload(job)))
    back = read_job(path)
    assert back.stop_after == 2 and back.job_id == job.job_id
    path.write_text(json.dumps(job_payload(dataclasses.replace(job, stop_after=None))))
    assert read_job(path).stop_after is None


def test_total_epochs_of_a_search() -> None:
    from bioscale.spec import PromoteSpec

    assert promote.total_epochs(None, 60, 500) == 30_000
    assert promote.total_epochs(PromoteSpec(rungs=[10, 50], keep="1/3"), 60, 500) == 60 * 10 + 20 * 40 + 6 * 450
    assert promote.total_epochs(PromoteSpec(rungs=[10, 100], keep=1), 60, 100) == 60 * 10 + 90  # the ImageNet rule
    assert promote.total_epochs(PromoteSpec(rungs=[2], keep=0.5), 5, 4) == 5 * 2 + 2 * 2


def test_a_search_with_halving_runs_stacked_as_it_runs_alone(tmp_path: Path, tiny_grid: dict) -> None:
    """A search's configurations of one rule differ only in numeric hyperparameters: with ``stack`` they train
    as stacks (the rung's candidates together, the promoted one on), and every record is what the unstacked
    run writes: the same promotions, epochs per job, and numbers within float32 rounding."""
    from bioscale.spec import ExecutorSpec

    path = _grid(tmp_path, tiny_grid, n=4, rungs=[2], keep=1, epochs=3)
    alone = run_grid(path, tmp_path / "alone", preflight=False)
    stacked = run_grid(path, tmp_path / "stacked", preflight=False,
                       executor=ExecutorSpec(name="inline", params={"stack": 4}))
    assert sorted(r.status for r in stacked.results) == sorted(r.status for r in alone.results)
    sizes = {len(r.provenance.stack or []) for r in stacked.results if r.provenance is not None}
    assert 4 in sizes  # a rung's four candidates of a rule trained as one stack
    decisions = [json.loads((tmp_path / d / "tiny" / promote.DECISIONS).read_text())["decisions"]
                 for d in ("alone", "stacked")]
    assert [e["kept"] for e in decisions[0]] == [e["kept"] for e in decisions[1]]
    for job in alone.jobs:
        a = Store(tmp_path / "alone").job_dir("tiny", job.job_id).read_metrics()
        b = Store(tmp_path / "stacked").job_dir("tiny", job.job_id).read_metrics()
        assert [m.epoch for m in a] == [m.epoch for m in b]
        assert [m.train_loss for m in b] == pytest.approx([m.train_loss for m in a], rel=1e-4)
        assert [m.val_error for m in b] == pytest.approx([m.val_error for m in a], abs=100 / 64 + 1e-9)
