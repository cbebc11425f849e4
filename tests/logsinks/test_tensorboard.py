"""TensorBoard sink: event files read back with tbparse equal metrics.jsonl epoch by epoch, the hyperparameters
are in the HParams plugin's summaries, and a resumed job has no epoch twice."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from tbparse import SummaryReader

from bioscale.interrupts import Interrupted
from bioscale.logsinks import diagnostic_tag
from bioscale.store import Store
from bioscale.train import Trainer, run_job

FIELDS = {"train/loss": "train_loss", "train/error": "train_error", "test/error": "test_error",
          "test/loss": "test_loss", "test/top5_error": "top5_error", "lr": "lr", "time/epoch_s": "epoch_time_s"}


def _rows(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def _scalars(job_dir: Path) -> dict[str, list[tuple[int, float]]]:
    frame = SummaryReader(str(job_dir / "tensorboard")).scalars
    out: dict[str, list[tuple[int, float]]] = {}
    for tag, step, value in zip(frame["tag"], frame["step"], frame["value"], strict=True):
        out.setdefault(tag, []).append((int(step), float(value)))
    return out


def _expected(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the event files must hold: every field of every line (float32, as TensorBoard stores it)."""
    want: dict[str, list[tuple[int, float]]] = {}
    best = np.inf
    for row in rows:
        best = min(best, row["test_error"])
        values = {tag: row[field] for tag, field in FIELDS.items() if row.get(field) is not None}
        values["test/best_error"] = best
        values.update({diagnostic_tag(k): v for k, v in row["diagnostics"].items()})
        for tag, value in values.items():
            want.setdefault(tag, []).append((row["epoch"], float(np.float32(value))))
    return want


def test_scalars_per_epoch_equal_the_metrics(tmp_path: Path, sink_job) -> None:
    job = sink_job("tensorboard")
    result = run_job(job, Store(tmp_path))
    assert result.status == "done" and result.error is None
    job_dir = tmp_path / "tiny" / job.job_id
    rows = _rows(job_dir)
    got = _scalars(job_dir)
    assert got == _expected(rows)
    angles = [tag for tag in got if tag.startswith("alignment/")]
    assert angles and all("layers." in tag for tag in angles)  # fa's angles, per layer, readable group
    assert rows[0]["top5_error"] is None or "test/top5_error" in got


def test_hyperparameters_are_recorded(tmp_path: Path, sink_job) -> None:
    job = sink_job("tensorboard", epochs=1)
    run_job(job, Store(tmp_path))
    hparams = SummaryReader(str(tmp_path / "tiny" / job.job_id / "tensorboard")).hparams
    values = dict(zip(hparams["tag"], hparams["value"], strict=True))
    assert values["rule"] == "fa" and values["arch"] == "fc" and values["dataset"] == "synthetic"
    assert values["job_id"] == job.job_id and values["seed"] == job.spec.seed
    assert values["optim.name"] == "adam" and values["optim.lr"] == pytest.approx(job.spec.optim.lr)
    assert values["arch.params.hidden"] == "[32, 32]"  # lists as JSON text: the plugin takes scalars only
    assert values["rule.params.last_layer_bp"] == "false" and values["train.amp"] == "false"


def test_resume_logs_no_epoch_twice(tmp_path: Path, sink_job, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after epoch 3 was logged but before its checkpoint: the resumed run trains epoch 3 again; a
    reader sees each epoch once, with the values of the finished job's metrics.jsonl."""
    job = sink_job("tensorboard", epochs=5)
    save = Trainer.save

    def stop_before_third_checkpoint(self, model, rule, epochs_done: int) -> None:
        if epochs_done == 3:
            raise Interrupted(signal.SIGTERM)
        save(self, model, rule, epochs_done)

    monkeypatch.setattr(Trainer, "save", stop_before_third_checkpoint)
    with pytest.raises(Interrupted):
        run_job(job, Store(tmp_path))
    job_dir = tmp_path / "tiny" / job.job_id
    assert [step for step, _ in _scalars(job_dir)["test/error"]] == [1, 2, 3]  # epoch 3 logged, not saved
    monkeypatch.setattr(Trainer, "save", save)
    result = run_job(job, Store(tmp_path))
    assert result.status == "done"
    assert len(list((job_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rebuilt from the store
    got = _scalars(job_dir)
    assert [step for step, _ in got["test/error"]] == [1, 2, 3, 4, 5]
    assert got == _expected(_rows(job_dir))
    hparams = SummaryReader(str(job_dir / "tensorboard")).hparams
    assert list(hparams["tag"]).count("job_id") == 1
