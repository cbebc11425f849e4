"""Diagnostics and checkpoint cadence (``bioscale.cadence``): which epochs, and that neither changes what a
job trains or its id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioscale.cadence import due, last_saved, saved_note
from bioscale.checkpoint import load_checkpoint
from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.spec import JobSpec, TrainSpec
from bioscale.store import Store
from bioscale.train import run_job


def test_due_epochs() -> None:
    pick = lambda every, epochs, first=False: [e + 1 for e in range(epochs) if due(every, e, epochs, first=first)]  # noqa: E731
    assert pick(1, 4) == [1, 2, 3, 4]
    assert pick(10, 25, first=True) == [1, 10, 20, 25]
    assert pick(3, 7) == [3, 6, 7]
    assert pick(0, 5, first=True) == []


@pytest.mark.parametrize(("every", "checkpoint", "done", "saved", "note"), [
    (1, True, 7, 7, "all saved"),
    (5, True, 7, 5, "checkpoint at epoch 5: a resume replays epochs 6-7"),
    (5, True, 10, 10, "all saved"),
    (4, True, 10, 10, "all saved"),  # the last epoch always writes one
    (5, True, 3, 0, "no checkpoint yet: a resume replays epochs 1-3"),
    (1, False, 3, 0, "no checkpoint yet: a resume replays epochs 1-3"),
])
def test_what_a_stop_keeps(every: int, checkpoint: bool, done: int, saved: int, note: str) -> None:
    """The epoch a resume starts from agrees with ``checkpoint_due`` (the epochs a checkpoint is written)."""
    train = TrainSpec(epochs=10, checkpoint_every=every, checkpoint=checkpoint)
    assert last_saved(train, done) == saved and saved_note(train, done) == note
    written = [e + 1 for e in range(done) if checkpoint and due(every, e, train.epochs)]
    assert saved == (written[-1] if written else 0)


def test_defaults() -> None:
    train = TrainSpec()
    assert (train.diagnostics_every, train.diagnostics_batch, train.checkpoint_every) == (5, 256, 1)


def test_cadence_settings_keep_the_job_id() -> None:
    base = {"dataset": "synthetic", "arch": "fc", "rule": "fa"}
    ids = {JobSpec.model_validate({**base, "train": t}).job_id()
           for t in ({}, {"diagnostics_every": 1}, {"diagnostics_every": 0}, {"diagnostics_every": 7},
                     {"diagnostics_batch": 64}, {"diagnostics_batch": None}, {"checkpoint_every": 5},
                     {"checkpoint": False})}
    assert len(ids) == 1
    assert JobSpec.model_validate({**base, "train": {"epochs": 3}}).job_id() not in ids


def _job(grid: dict, **train) -> Job:
    raw = {**grid["base"], "rule": "fa"}
    raw["train"] = {**raw["train"], **train}
    return Job("tiny", resolve(raw), "test")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_diagnostics_run_on_the_cadence_and_change_nothing_else(tmp_path: Path, tiny_grid: dict) -> None:
    every = _job(tiny_grid, epochs=5, diagnostics_every=1, diagnostics_batch=None)
    sparse = _job(tiny_grid, epochs=5, diagnostics_every=2, diagnostics_batch=32)
    assert every.job_id == sparse.job_id
    for name, job in (("every", every), ("sparse", sparse)):
        assert run_job(job, Store(tmp_path / name)).status == "done"
    a, b = (_rows(tmp_path / d / "tiny" / every.job_id / "metrics.jsonl") for d in ("every", "sparse"))
    assert [bool(r["diagnostics"]) for r in b] == [True, True, False, True, True]  # 1, 2, 4 and the last
    assert all(r["diagnostics"] for r in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_time_s", "diagnostics")} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)  # diagnostics touch no training state
    assert b[1]["diagnostics"].keys() == a[1]["diagnostics"].keys()
    assert b[1]["diagnostics"] != a[1]["diagnostics"]  # measured on 32 examples, not the whole 128


class _StopAfter(BaseException):
    pass


@pytest.mark.parametrize("every", [2, 3])
def test_a_job_resumes_from_its_last_checkpoint_and_replays_exactly(tmp_path: Path, tiny_grid: dict,
                                                                    every: int) -> None:
    job = _job(tiny_grid, epochs=5, checkpoint_every=every)

    def stop(event) -> None:
        if event.test_error is not None and event.epoch == 4:  # epoch 4's metrics written, not its checkpoint
            raise _StopAfter

    with pytest.raises(_StopAfter):
        run_job(job, Store(tmp_path / "stopped"), stop)
    jdir = tmp_path / "stopped" / "tiny" / job.job_id
    assert len(_rows(jdir / "metrics.jsonl")) == 4
    assert load_checkpoint(jdir / "checkpoint.pt", None)["epochs_done"] == 4 // every * every  # 4 or 3: replays
    assert run_job(job, Store(tmp_path / "stopped")).status == "done"
    assert run_job(_job(tiny_grid, epochs=5), Store(tmp_path / "clean")).status == "done"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]  # noqa: E731
    assert strip(_rows(jdir / "metrics.jsonl")) == strip(_rows(tmp_path / "clean" / "tiny" / job.job_id
                                                                / "metrics.jsonl"))


def test_evaluation_cadence_records_errors_only_when_evaluated(tmp_path: Path, tiny_grid: dict) -> None:
    """eval_every 2 over 5 epochs evaluates after epochs 2, 4 and 5; training is the same as evaluating every
    epoch, the best error is the best of the evaluated epochs, and the id differs from eval_every 1's."""
    every = _job(tiny_grid, epochs=5)
    sparse = _job(tiny_grid, epochs=5, eval_every=2)
    assert every.job_id != sparse.job_id
    results = {name: run_job(job, Store(tmp_path / name)) for name, job in (("every", every), ("sparse", sparse))}
    assert all(r.status == "done" for r in results.values())
    a = _rows(tmp_path / "every" / "tiny" / every.job_id / "metrics.jsonl")
    b = _rows(tmp_path / "sparse" / "tiny" / sparse.job_id / "metrics.jsonl")
    assert [r["test_error"] is not None for r in b] == [False, True, False, True, True]
    assert [r["train_error"] is not None for r in b] == [False, True, False, True, True]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]  # evaluation changes no training
    for ra, rb in zip(a, b, strict=True):
        if rb["test_error"] is not None:
            assert (rb["test_error"], rb["train_error"]) == (ra["test_error"], ra["train_error"])
    evaluated = [r for r in b if r["test_error"] is not None]
    best = min(evaluated, key=lambda r: r["test_error"])
    assert results["sparse"].test_error == best["test_error"] and results["sparse"].best_epoch == best["epoch"]
    assert results["sparse"].final_test_error == b[-1]["test_error"]
    assert results["sparse"].train_error == min(r["train_error"] for r in evaluated)


def test_reports_read_metrics_with_unevaluated_epochs(tmp_path: Path, tiny_grid: dict) -> None:
    from bioscale.report.frame import load_curves, load_frame

    job = _job(tiny_grid, epochs=3, eval_every=2)
    assert run_job(job, Store(tmp_path)).status == "done"
    frame = load_frame(Store(tmp_path), "tiny")
    assert len(frame) == 1 and frame.iloc[0]["best_epoch"] in (2, 3)
    curves = load_curves(Store(tmp_path), "tiny")
    assert curves.sort_values("epoch")["test_error"].isna().tolist() == [True, False, False]
