import json
from pathlib import Path

import pytest

from bioscale.spec import EpochMetrics, JobResult, JobSpec, Provenance
from bioscale.store import JobDir, Store, atomic_write, atomic_write_text, load_rows


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    atomic_write_text(path, "old")

    def torn(f) -> None:
        f.write(b"half of the new")
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, torn)
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_round_trip_and_status(tmp_path: Path) -> None:
    store = Store(tmp_path)
    spec = JobSpec.model_validate({"dataset": "synthetic", "arch": "fc", "rule": "bp"})
    jdir = store.job_dir("g", spec.job_id())
    jdir.write_spec("g", spec)
    assert jdir.status() == "pending"
    assert jdir.read_spec() == spec
    rows = [EpochMetrics(epoch=i, train_loss=1.0, train_error=2.0, test_error=3.0, epoch_time_s=0.1)
            for i in (1, 2)]
    jdir.write_metrics(rows)
    assert jdir.read_metrics() == rows
    jdir.write_result(JobResult(job_id=spec.job_id(), grid="g", status="done", epochs=2))
    assert jdir.status() == "done"
    assert [g for g, _ in store.jobs()] == ["g"] and store.grids() == ["g"]
    assert load_rows(store)[0]["metrics"] == rows


def test_running_job_whose_process_is_gone_is_pending(tmp_path: Path) -> None:
    import socket

    jdir = JobDir(tmp_path / "j")
    prov = Provenance(bioscale_version="0", python_version="3", hostname=socket.gethostname(), pid=2**22 + 12345,
                      started_at="now")
    jdir.write_result(JobResult(job_id="j", grid="g", status="running", provenance=prov))
    assert jdir.status() == "pending"
    import os

    prov.pid = os.getpid()
    jdir.write_result(JobResult(job_id="j", grid="g", status="running", provenance=prov))
    assert jdir.status() == "running"


def test_unreadable_spec_is_skipped_not_fatal(tmp_path: Path) -> None:
    bad = tmp_path / "g" / "abc"
    bad.mkdir(parents=True)
    (bad / "spec.json").write_text(json.dumps({"grid": "g", "spec": {"nonsense": 1}}))
    assert load_rows(Store(tmp_path)) == []
