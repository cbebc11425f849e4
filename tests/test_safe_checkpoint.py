"""Checkpoints are read with the safe loader: a crafted one is refused and set aside, its payload never runs;
everything the trainer writes loads; a foreign one restarts the job exactly as a fresh one would start."""

from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from bioscale.checkpoint import CheckpointError, UnsafeCheckpoint, load_checkpoint
from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.store import Store
from bioscale.train import run_job

BASE = {
    "dataset": {"name": "synthetic", "params": {"train_size": 128, "test_size": 64, "shape": [1, 8, 8]}},
    "arch": {"name": "fc", "params": {"hidden": [16]}},
    "rule": "bp",
    "optim": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 128},
}


def _job(**sets) -> Job:
    return Job("safe", resolve({**BASE, **sets}), "test")


def _numbers(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


class Payload:
    """A pickle that, if unpickled by the ordinary loader, writes ``marker``: what an attacker would ship."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('the payload ran')",))


def _crafted(path: Path, marker: Path, fmt: str) -> bytes:
    state = {"epochs_done": 1, "model": Payload(marker), "rule": {}, "torch_rng": torch.get_rng_state(),
             "cuda_rng": [], "python_rng": (3, (0,), None), "wall_time_s": 0.0}
    if fmt == "zip":
        torch.save(state, path)
    else:  # a bare pickle, torch's legacy format
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_crafted_checkpoint_is_refused_not_executed(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "x.pt"
    _crafted(path, marker, fmt)
    with pytest.raises(UnsafeCheckpoint, match="nothing in it was run") as err:
        load_checkpoint(path)
    assert not marker.exists()
    assert "weights_only=False" not in str(err.value)  # never advise the unsafe way out
    with contextlib.suppress(RuntimeError):  # a bare pickle is not torch's layout: it fails after unpickling
        torch.load(path, weights_only=False)  # what the trainer used to do: the payload runs
    assert marker.exists(), "the crafted file must really carry a payload for this test to mean anything"


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_crafted_checkpoint_in_a_job_is_set_aside_with_a_note(tmp_path: Path, fmt: str) -> None:
    job = _job()
    store = Store(tmp_path / "store")
    assert run_job(job, store).status == "done"
    jdir = store.job_dir(job.grid, job.job_id).path
    clean = _numbers(jdir / "metrics.jsonl")
    marker = tmp_path / "PAYLOAD_RAN"
    crafted = _crafted(jdir / "checkpoint.pt", marker, fmt)
    (jdir / "result.json").unlink()  # as if killed: the job resumes from its checkpoint

    result = run_job(job, store)
    assert not marker.exists(), "the checkpoint's payload was executed"
    assert result.status == "done" and result.epochs == 2
    assert "the checkpoint could not be read safely" in (result.error or "")
    assert "nothing in it was run" in (result.error or "") and "checkpoint.pt.aside-1" in (result.error or "")
    assert (jdir / "checkpoint.pt.aside-1").read_bytes() == crafted  # kept, never deleted
    assert "could not be read safely" in (jdir / "README.aside-1").read_text()
    assert _numbers(jdir / "metrics.jsonl") == clean  # restarted from epoch 0, as a fresh job


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "ss", "kp",
                                  {"name": "dtp", "params": {"schedule": "alternating"}}])
def test_every_checkpoint_the_trainer_writes_loads_safely(tmp_path: Path, rule: str | dict) -> None:
    """Every rule's state (Adam; SGD with momentum and a schedule for fa) is within the safe loader's types."""
    sgd = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": {"step_size": 1}}
    optim = sgd if rule == "fa" else BASE["optim"]
    job = _job(rule=rule, optim=optim, train={"epochs": 1, "batch_size": 64})
    run_job(job, Store(tmp_path))
    state = load_checkpoint(tmp_path / "safe" / job.job_id / "checkpoint.pt")
    assert state["epochs_done"] == 1 and isinstance(state["python_rng"], tuple)


def test_foreign_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="it has no 'epochs_done'"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="EOFError"):
        load_checkpoint(path)


def test_checkpoint_that_fails_half_way_restarts_exactly_like_a_fresh_job(tmp_path: Path) -> None:
    """A checkpoint whose last tensor has a foreign shape: loading copies the first tensors into the model before
    it fails. The job must still start from its seed's initial model, not from that half-loaded one."""
    job = _job()
    store = Store(tmp_path)
    run_job(job, store)
    jdir = tmp_path / "safe" / job.job_id
    clean = _numbers(jdir / "metrics.jsonl")
    state = torch.load(jdir / "checkpoint.pt", weights_only=True)
    last = list(state["model"])[-1]
    state["model"][last] = torch.zeros(3, 3)
    torch.save(state, jdir / "checkpoint.pt")
    (jdir / "result.json").unlink()

    result = run_job(job, store)
    assert result.status == "done" and "the checkpoint could not be used" in (result.error or "")
    assert "size mismatch" in (result.error or "")
    assert _numbers(jdir / "metrics.jsonl") == clean
