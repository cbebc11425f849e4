"""Weights & Biases sink in offline mode (no network): the run directory under the job's folder holds the
run (id = job id) with every epoch's scalars as its history; the mode defaults to offline without an API key."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bioscale.logsinks import diagnostic_tag
from bioscale.logsinks.wandb import mode
from bioscale.store import Store
from bioscale.train import run_job

wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed")


def _records(path: Path) -> list:
    """The records of a run's transaction log (``run-<id>.wandb``): wandb's LevelDB-style log format (a 7-byte
    file header, 32 KiB blocks of chunks with a 7-byte header: checksum, length, type) of protobuf ``Record``s.
    wandb ships no Python reader for it any more (its ``datastore`` module is gone), so the test reads it."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunk, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:  # zero padding
            pos += left - 7
            continue
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def _history(run_file: Path) -> dict[int, dict[str, float]]:
    steps: dict[int, dict[str, float]] = {}
    for record in _records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            steps[record.history.step.num] = items
    return steps


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_offline_run_has_every_epoch(tmp_path: Path, sink_job, offline: None) -> None:
    job = sink_job("wandb", epochs=3)
    result = run_job(job, Store(tmp_path / "results"))
    assert result.status == "done" and result.error is None
    job_dir = tmp_path / "results" / "tiny" / job.job_id
    (run_dir,) = (job_dir / "wandb").glob(f"offline-run-*-{job.job_id}")  # id = job id, under the job's folder
    history = _history(run_dir / f"run-{job.job_id}.wandb")
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(history) == [1, 2, 3]
    for row in rows:
        logged = history[row["epoch"]]
        assert logged["epoch"] == row["epoch"]
        assert logged["test/error"] == row["test_error"] and logged["train/loss"] == row["train_loss"]
        assert logged["lr"] == row["lr"]
        for key, value in row["diagnostics"].items():
            assert logged[diagnostic_tag(key)] == pytest.approx(value, rel=1e-12)
    (run,) = [r.run for r in _records(run_dir / f"run-{job.job_id}.wandb") if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.run_id == job.job_id and run.run_group == "tiny" and run.project == "bioscale"
    assert run.display_name == job.label
    assert config["job_id"] == job.job_id and config["rule"]["name"] == "fa" and config["seed"] == 0
    assert config["optim"] == job.spec.optim.model_dump(mode="json") | {"betas": list(job.spec.optim.betas)}


def test_offline_without_an_api_key(tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    assert mode({"NETRC": str(netrc)}) == "offline"
    assert mode({"NETRC": str(netrc), "WANDB_API_KEY": "x" * 40}) == "online"
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert mode({"NETRC": str(netrc)}) == "online"
    assert mode({"NETRC": str(netrc), "WANDB_MODE": "disabled"}) == "disabled"


def test_resumed_job_continues_the_same_run(tmp_path: Path, sink_job, offline: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after two epochs: the resumed run has the same id and logs from epoch 3 on."""
    import signal

    from bioscale.interrupts import Interrupted
    from bioscale.train import Trainer

    job = sink_job("wandb", epochs=4)
    save = Trainer.save

    def stop_after_two(self, model, rule, epochs_done: int) -> None:
        save(self, model, rule, epochs_done)
        if epochs_done == 2:
            raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "save", stop_after_two)
    with pytest.raises(Interrupted):
        run_job(job, Store(tmp_path / "results"))
    monkeypatch.setattr(Trainer, "save", save)
    assert run_job(job, Store(tmp_path / "results")).status == "done"
    runs = sorted((tmp_path / "results" / "tiny" / job.job_id / "wandb").glob(f"offline-run-*-{job.job_id}*"))
    assert len(runs) == 2  # one per process that ran the job, one run id: `wandb sync` joins them
    assert [sorted(_history(run / f"run-{job.job_id}.wandb")) for run in runs] == [[1, 2], [3, 4]]
