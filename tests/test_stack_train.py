"""A stack's members are recorded exactly as if each had run alone (``bioscale.stack_train``): same metrics
and checkpoints as solo runs (float32: within rounding), their own files and results, resume inside and
outside the stack, a diverging member leaves the others training, a held job is left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bioscale import claims
from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.stack_train import run_stack, unsupported
from bioscale.store import Store
from bioscale.train import run_job

RAW = {"dataset": {"name": "synthetic", "params": {"train_size": 192, "test_size": 96, "shape": [1, 6, 6]}},
       "arch": {"name": "fc", "params": {"hidden": [16, 12]}},
       "optim": {"name": "adam"}, "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 96,
                                            "device": "cpu", "diagnostics_every": 1, "diagnostics_batch": 32}}


def _jobs(rule: str | dict = "fa", lrs=(1e-3, 3e-3), seeds=(0, 1), **extra) -> list[Job]:
    jobs = []
    for seed in seeds:
        for lr in lrs:
            raw = json.loads(json.dumps(RAW))
            raw.update(rule=rule, seed=seed, **extra)
            raw["optim"] = {**raw["optim"], "lr": lr}
            spec = resolve(raw)
            jobs.append(Job("g", spec, f"{spec.rule.name} s{seed} lr={lr}"))
    return jobs


def _rows(store: Store, job: Job) -> list[dict]:
    return [r.model_dump() for r in store.job_dir(job.grid, job.job_id).read_metrics()]


def _close(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "test_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), key
        for key in ("train_error", "test_error"):  # one example either way at most (float32 rounding)
            assert abs(rb[key] - ra[key]) <= 100 / 96 + 1e-9, key
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
        assert rb["diagnostics"].keys() == ra["diagnostics"].keys()


@pytest.mark.parametrize("rule", ["fa", "dtp"])
def test_every_member_records_what_its_solo_run_records(tmp_path: Path, rule: str) -> None:
    # dtp per_example: in float32 the default batch_mean step (alpha/32 per example) sits where Adam magnifies
    # rounding, and stacked and solo drift ~1e-4 apart; its stacked step is exact in float64 (tests/stack)
    jobs = _jobs({"name": "dtp", "params": {"alpha_convention": "per_example"}} if rule == "dtp" else rule)
    solo, stacked = Store(tmp_path / "solo"), Store(tmp_path / "stack")
    for job in jobs:
        assert run_job(job, solo).status == "done"
    results = run_stack(jobs, stacked)
    assert [r.status for r in results] == ["done"] * len(jobs)
    for job, result in zip(jobs, results, strict=True):
        _close(_rows(solo, job), _rows(stacked, job))
        assert result.provenance is not None and result.provenance.stack == [j.job_id for j in jobs]
        recorded = stacked.job_dir("g", job.job_id).read_result()
        assert recorded is not None and recorded.status == "done" and recorded.epochs == 3
        a = torch.load(solo.job_dir("g", job.job_id).checkpoint, weights_only=True)
        b = torch.load(stacked.job_dir("g", job.job_id).checkpoint, weights_only=True)
        assert a.keys() == b.keys() and a["model"].keys() == b["model"].keys()
        for key in a["model"]:
            assert torch.allclose(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5), key
        assert torch.equal(a["torch_rng"], b["torch_rng"])  # the member drew what its solo job drew


def test_running_train_error_and_a_validation_split_as_alone(tmp_path: Path) -> None:
    train = {**RAW["train"], "train_error": "running"}
    dataset = {"name": "synthetic", "params": {**RAW["dataset"]["params"], "validation": 48}}
    jobs = _jobs("fa", train=train, dataset=dataset)
    solo, stacked = Store(tmp_path / "solo"), Store(tmp_path / "stack")
    for job in jobs:
        assert run_job(job, solo).status == "done"
    assert [r.status for r in run_stack(jobs, stacked)] == ["done"] * len(jobs)
    for job in jobs:
        a, b = _rows(solo, job), _rows(stacked, job)
        _close(a, b)
        assert all(r["val_error"] is not None for r in b)
        assert [r["val_error"] for r in b] == pytest.approx([r["val_error"] for r in a], abs=100 / 48 + 1e-9)


def test_a_stopped_stack_resumes_in_a_stack_or_alone(tmp_path: Path) -> None:
    jobs = _jobs("fa")
    whole = Store(tmp_path / "whole")
    run_stack(jobs, whole)
    resumed = Store(tmp_path / "resumed")
    first = run_stack([Job(j.grid, j.spec, j.label, stop_after=1) for j in jobs], resumed)
    assert [r.status for r in first] == ["pending"] * len(jobs)
    assert all(len(_rows(resumed, j)) == 1 for j in jobs)
    again = [*run_stack(jobs[:3], resumed), run_job(jobs[3], resumed)]  # three in a stack, one alone
    assert [r.status for r in again] == ["done"] * len(jobs)
    for job in jobs[:3]:
        _close(_rows(whole, job), _rows(resumed, job))
    _close(_rows(whole, jobs[3]), _rows(resumed, jobs[3]))


def test_a_diverging_member_leaves_the_others_training(tmp_path: Path) -> None:
    jobs = _jobs("fa", lrs=(1e-3, 1e300), seeds=(0,), optim={"name": "sgd"})
    store = Store(tmp_path)
    results = run_stack(jobs, store)
    assert [r.status for r in results] == ["done", "diverged"]
    assert "training loss is nan" in (results[1].error or "").lower()
    assert len(_rows(store, jobs[0])) == 3
    alone = Store(tmp_path / "alone")
    assert run_job(jobs[0], alone).status == "done"
    _close(_rows(alone, jobs[0]), _rows(store, jobs[0]))


def test_a_job_held_elsewhere_or_finished_is_left_out(tmp_path: Path) -> None:
    jobs = _jobs("fa")
    store = Store(tmp_path)
    assert run_job(jobs[0], store).status == "done"
    held = claims.acquire(store.job_dir("g", jobs[1].job_id).path, 60)
    assert held is not None
    with held:
        results = run_stack(jobs, store)
    assert [r.status for r in results] == ["done", "running", "done", "done"]
    assert results[2].provenance is not None and results[2].provenance.stack == [jobs[2].job_id, jobs[3].job_id]


@pytest.mark.parametrize(("change", "reason"), [
    ({"optim": {"name": "adam", "warmup": {"steps": 3}}}, "warmup"),
    ({"train": {**RAW["train"], "distributed": {"nproc_per_node": 2}}}, "distributed"),
])
def test_what_stacks_do_not_do_yet_is_said(change: dict, reason: str) -> None:
    raw = {**json.loads(json.dumps(RAW)), "rule": "fa", **change}
    assert reason in (unsupported(resolve(raw)) or "")
    assert unsupported(resolve({**RAW, "rule": "fa"})) is None


# ---- the executors form stacks (--stack N) ---------------------------------------------------------------


def _grid_file(tmp_path: Path) -> Path:
    import yaml

    raw = json.loads(json.dumps(RAW))
    grid = {"name": "stk", "base": {**raw, "rule": "fa"}, "axes": {"seed": [0, 1, 2], "optim.lr": [1e-3, 2e-3]}}
    path = tmp_path / "stk.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_inline_executor_runs_stacks_and_says_so_per_job(tmp_path: Path) -> None:
    from bioscale.events import JobFinished, JobStarted
    from bioscale.executors import InlineExecutor

    jobs = _jobs("fa", seeds=(0, 1, 2))  # 6 jobs, stacks of at most 4: 3 + 3
    events: list[object] = []
    results = InlineExecutor(stack=4).run(jobs, Store(tmp_path), events.append)
    assert [r.status for r in results] == ["done"] * 6
    stacks = {tuple(r.provenance.stack or ()) for r in results if r.provenance is not None}
    assert sorted(len(s) for s in stacks) == [3, 3]
    started = [e.job_id for e in events if isinstance(e, JobStarted)]
    finished = [e.job_id for e in events if isinstance(e, JobFinished)]
    assert sorted(started) == sorted(finished) == sorted(j.job_id for j in jobs)


@pytest.mark.parametrize("extra", [["--stack", "3"], ["--executor", "local", "--workers", "2", "--stack", "3"]])
def test_bioscale_run_with_stacks_records_every_job_and_resumes_as_a_no_op(tmp_path: Path, extra: list[str]) -> None:
    import subprocess
    import sys

    grid, results = _grid_file(tmp_path), tmp_path / "runs"
    cmd = [sys.executable, "-m", "bioscale", "run", str(grid), "--results", str(results), "-q", *extra]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    store = Store(results)
    recorded = [jdir.read_result() for _, jdir in store.jobs("stk")]
    assert len(recorded) == 6 and all(r is not None and r.status == "done" for r in recorded)
    assert {len(r.provenance.stack or []) for r in recorded if r and r.provenance} == {3}
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "nothing to run" in again.stderr


def test_stack_is_an_executor_setting_checked_up_front() -> None:
    from bioscale.errors import BioscaleError
    from bioscale.executors import make_executor
    from bioscale.spec import ExecutorSpec

    assert make_executor(ExecutorSpec(name="local", params={"stack": 8})).stack == 8  # type: ignore[attr-defined]
    with pytest.raises(BioscaleError, match="stack is a positive integer"):
        make_executor(ExecutorSpec(name="inline", params={"stack": 0}))
    with pytest.raises(BioscaleError, match="slurm"):
        make_executor(ExecutorSpec(name="slurm", params={"stack": 4}))
