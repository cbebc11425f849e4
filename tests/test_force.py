"""run --force: finished jobs rerun from scratch, their files kept aside (never deleted), the rerun noted in
the new result, and a job another process holds never forced."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from bioscale.claims import LEASE, Lease
from bioscale.events import JobProgress
from bioscale.force import FINISHED, finished_jobs, force_finished, would_run
from bioscale.runner import plan, run_grid
from bioscale.spec import EpochMetrics, JobResult
from bioscale.store import CHECKPOINT, METRICS, RERUN, RESULT, Store

STATUSES = ["done", "diverged", "failed", "pending"]


@pytest.fixture
def store_and_grid(tmp_path: Path, grid_writer, tiny_grid: dict) -> tuple[Store, Path, dict[str, str]]:
    """tiny's 4 jobs written by hand: done, diverged, failed, pending (status by job id)."""
    grid = grid_writer(tmp_path, tiny_grid)
    planned = plan(grid, tmp_path / "results")
    store, statuses = planned.store, {}
    for job, status in zip(planned.jobs, STATUSES, strict=True):
        jdir = store.job_dir(job.grid, job.job_id)
        jdir.write_spec(job.grid, job.spec)
        statuses[job.job_id] = status
        if status == "pending":
            continue
        epochs = job.spec.train.epochs if status == "done" else 1
        jdir.write_metrics([EpochMetrics(epoch=i + 1, train_loss=1.0, train_error=10.0, test_error=12.0 - i,
                                         epoch_time_s=1.0, lr=1e-3) for i in range(epochs)])
        jdir.checkpoint.write_bytes(b"the old checkpoint")
        jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status=status, epochs=epochs,
                                    test_error=12.0 - epochs + 1, error="boom" if status == "failed" else None))
    return store, grid, statuses


def test_finished_jobs_are_set_aside_never_deleted(store_and_grid: tuple) -> None:
    store, grid, statuses = store_and_grid
    planned = plan(grid, store.root)
    assert {j.job_id for j in finished_jobs(planned)} == {i for i, s in statuses.items() if s in FINISHED}
    before = {i: {n: (store.job_dir("tiny", i).path / n).read_bytes() for n in (RESULT, METRICS, CHECKPOINT)}
              for i, s in statuses.items() if s != "pending"}
    assert len(planned.todo) == 2  # failed and pending: what a plain run would run
    for job_id in before:  # what the log sinks wrote for the earlier run goes aside with it
        events = store.job_dir("tiny", job_id).path / "tensorboard" / "events.out.tfevents.1"
        events.parent.mkdir()
        events.write_bytes(b"earlier run")

    outcome = force_finished(planned)
    assert {j.job_id for j in outcome.forced} == set(before) and not outcome.running
    assert [j.job_id for j in outcome.plan.todo] == [j.job_id for j in planned.jobs]  # all 4, grid order
    for job_id, files in before.items():
        path = store.job_dir("tiny", job_id).path
        for name, content in files.items():
            assert not (path / name).exists()
            assert (path / f"{name}.aside-1").read_bytes() == content  # kept, byte for byte
        assert (path / "tensorboard.aside-1" / "events.out.tfevents.1").read_bytes() == b"earlier run"
        assert not (path / "tensorboard").exists()
        assert "bioscale run --force" in (path / "README.aside-1").read_text()
        note = (path / RERUN).read_text()
        assert f"the earlier run ({statuses[job_id]}," in note and "result.json.aside-1" in note
        assert store.job_dir("tiny", job_id).status() == "pending"  # an ordinary job to run now
        log = [json.loads(line) for line in (path / "claims.log").read_text().splitlines()]
        assert [e["event"] for e in log] == ["claimed", "released"]  # done under the job's claim
    pending = next(i for i, s in statuses.items() if s == "pending")
    assert sorted(p.name for p in store.job_dir("tiny", pending).path.iterdir()) == ["spec.json"]


def test_the_rerun_is_noted_in_every_result_it_writes_and_a_second_force_keeps_both(store_and_grid: tuple) -> None:
    store, grid, statuses = store_and_grid
    done = next(i for i, s in statuses.items() if s == "done")
    force_finished(plan(grid, store.root))
    jdir = store.job_dir("tiny", done)
    jdir.write_result(JobResult(job_id=done, grid="tiny", status="failed", error="ValueError: x"))
    assert jdir.read_result().error.startswith("ValueError: x\nrerun from scratch by `bioscale run --force`")
    jdir.write_result(JobResult(job_id=done, grid="tiny", status="done", epochs=2))
    first_note = jdir.read_result().error
    assert first_note.startswith("rerun from scratch by `bioscale run --force` at ")

    force_finished(plan(grid, store.root))  # again: the first rerun's files go to *.aside-2
    assert json.loads((jdir.path / "result.json.aside-2").read_text())["error"] == first_note
    assert (jdir.path / "rerun.txt.aside-2").read_text().strip() == first_note
    assert "result.json.aside-2" in jdir.rerun_note() and (jdir.path / "result.json.aside-1").exists()


def test_a_job_running_elsewhere_is_never_forced(store_and_grid: tuple) -> None:
    """Finished when planned, then claimed by another process before --force got to it: left alone."""
    store, grid, statuses = store_and_grid
    planned = plan(grid, store.root)
    done = next(i for i, s in statuses.items() if s == "done")
    now = time.time()
    lease = Lease(host=socket.gethostname(), pid=os.getpid(), pid_started=None, token="other", claimed_at=now,
                  heartbeat=now, timeout_s=1e9)
    path = store.job_dir("tiny", done).path
    (path / LEASE).write_text(lease.model_dump_json())
    outcome = force_finished(planned)
    assert [j.job_id for j in outcome.running] == [done]
    assert done not in {j.job_id for j in outcome.plan.todo}
    assert (path / RESULT).exists() and not (path / "result.json.aside-1").exists() and not (path / RERUN).exists()
    # and a job whose lease is live when planning is not even a candidate
    assert done not in {j.job_id for j in finished_jobs(plan(grid, store.root))}


def test_would_run_changes_nothing(store_and_grid: tuple) -> None:
    store, grid, _ = store_and_grid
    planned = plan(grid, store.root)
    files = sorted(str(p) for p in store.root.rglob("*"))
    assert len(would_run(planned).todo) == 4
    assert sorted(str(p) for p in store.root.rglob("*")) == files


def test_run_grid_force_reruns_from_scratch(tmp_path: Path, grid_writer, tiny_grid: dict) -> None:
    """The rerun trains every epoch again (not resumed from the kept checkpoint) and ends where the first run
    did (same seed); its result carries the note."""
    grid = grid_writer(tmp_path, tiny_grid)
    results = tmp_path / "results"
    where = ["rule.name=bp", "seed=0"]
    first = run_grid(grid, results, ["train.epochs=1"], where=where)
    assert first.counts == {"done": 1}
    job_id = first.results[0].job_id
    assert run_grid(grid, results, ["train.epochs=1"], where=where).results == []
    events: list = []
    again = run_grid(grid, results, ["train.epochs=1"], where=where, force=True, on_event=events.append)
    assert again.counts == {"done": 1}
    assert any(isinstance(e, JobProgress) and e.epoch == 1 and e.step for e in events)  # it trained again
    jdir = Store(results).job_dir("tiny", job_id)
    old = JobResult.model_validate_json((jdir.path / "result.json.aside-1").read_text())
    new = jdir.read_result()
    assert new.test_error == old.test_error and new.epochs == old.epochs == 1
    assert new.provenance.started_at >= old.provenance.started_at  # (timestamps have a resolution of seconds)
    assert "rerun from scratch by `bioscale run --force`" in new.error
    for name in (RESULT, METRICS, CHECKPOINT):  # the first run's files, kept; the rerun wrote its own
        assert (jdir.path / f"{name}.aside-1").exists() and (jdir.path / name).exists()
    assert len(list(Store(results).jobs())) == 1  # only the selected job was touched


def test_two_forces_planned_at_once_set_a_job_aside_once(store_and_grid: tuple) -> None:
    """Two `bioscale run --force` that planned before either set anything aside: the second finds the job
    pending (under its claim) and runs it as it is; nothing of the first rerun's state is set aside again."""
    store, grid, statuses = store_and_grid
    first, second = plan(grid, store.root), plan(grid, store.root)
    force_finished(first)
    outcome = force_finished(second)
    assert {j.job_id for j in outcome.forced} == {i for i, s in statuses.items() if s in FINISHED}
    for job in outcome.forced:
        path = store.job_dir("tiny", job.job_id).path
        assert not list(path.glob("*.aside-2")) and (path / RERUN).exists()
