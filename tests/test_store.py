import json
import os
from pathlib import Path

import pytest

from bioscale.grid import resolve
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
    spec = resolve({"dataset": "synthetic", "arch": "fc", "rule": "bp", "train": {"epochs": 2}})  # as stored: resolved
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


def test_running_means_a_live_lease(tmp_path: Path) -> None:
    """A job recorded running whose holder is gone is pending (resumable); running is a live lease."""
    import socket

    from bioscale import claims

    jdir = JobDir(tmp_path / "j")
    prov = Provenance(bioscale_version="0", python_version="3", hostname=socket.gethostname(), pid=os.getpid(),
                      started_at="now")
    jdir.write_result(JobResult(job_id="j", grid="g", status="running", provenance=prov))
    assert jdir.status() == "pending"  # our pid is alive, but no lease says we train it
    with claims.acquire(jdir.path):
        assert jdir.status() == "running"
    assert jdir.status() == "pending"


def test_unreadable_spec_is_listed_as_damaged_not_fatal(tmp_path: Path) -> None:
    """A spec this version cannot read is named with its problem, not skipped silently nor fatal."""
    bad = tmp_path / "g" / "abc"
    bad.mkdir(parents=True)
    (bad / "spec.json").write_text(json.dumps({"grid": "g", "spec": {"nonsense": 1}}))
    [row] = load_rows(Store(tmp_path))
    assert row["job_id"] == "abc" and row["spec"] is None and row["spec_data"] == {"nonsense": 1}
    assert row["status"] == "failed" and "does not match this version" in row["problems"][0]


# -- damaged files are read without raising, named, and kept -------------------------------------------------
def _healthy_job(tmp_path: Path, epochs: int = 2) -> tuple[Store, JobDir, JobSpec]:
    store = Store(tmp_path)
    spec = resolve({"dataset": "synthetic", "arch": "fc", "rule": "bp", "train": {"epochs": epochs}})
    jdir = store.job_dir("g", spec.job_id())
    jdir.write_spec("g", spec)
    jdir.write_metrics([EpochMetrics(epoch=i, train_loss=1.0, train_error=2.0, test_error=3.0 - i, epoch_time_s=0.1)
                        for i in range(1, epochs + 1)])
    jdir.write_result(JobResult(job_id=spec.job_id(), grid="g", status="done", epochs=epochs))
    assert jdir.health() == [] and jdir.status() == "done"
    return store, jdir, spec


@pytest.mark.parametrize(("name", "content", "says"), [
    ("result.json", b'{"job_id": "x", "grid": "g", "sta', "result.json is damaged"),
    ("result.json", b'{"job_id": "x", "grid": "\xff\xfe", "status": "done"}', "result.json is damaged"),
    ("result.json", b"[1, 2, 3]", "result.json is damaged"),
    ("spec.json", b'{"grid": "g", "spec": {"dataset": "synth', "spec.json is not valid JSON"),
    ("spec.json", b"\xff\xfe\x00garbage", "spec.json is not valid JSON"),
    ("spec.json", b"[1, 2, 3]", "spec.json holds a list"),
    ("spec.json", b'{"grid": "g", "spec": 3}', "without a 'spec' mapping"),
    ("metrics.jsonl", b"\xff\xfe not utf-8\n", "metrics.jsonl: line 1 is damaged"),
])
def test_damaged_file_is_named_never_raised(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    store, jdir, _ = _healthy_job(tmp_path)
    (jdir.path / name).write_bytes(content)
    problems = jdir.health()
    assert len(problems) >= 1 and says in problems[0], problems
    assert jdir.status() == "failed"  # the runner re-runs it; the report shows it
    jdir.read_result(), jdir.read_spec(), jdir.read_metrics()  # none of them raises
    [row] = load_rows(store)
    assert row["status"] == "failed" and row["problems"] == problems
    assert store.damaged() == [("g", jdir.job_id, problems)]


def test_metrics_keep_their_consistent_prefix(tmp_path: Path) -> None:
    _, jdir, _ = _healthy_job(tmp_path, epochs=4)
    lines = (jdir.path / "metrics.jsonl").read_bytes().splitlines(keepends=True)

    (jdir.path / "metrics.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:20])  # torn last line
    rows, problems = jdir.scan_metrics()
    assert [r.epoch for r in rows] == [1, 2, 3] and "last line (4) is torn" in problems[0]

    (jdir.path / "metrics.jsonl").write_bytes(lines[0] + b'{"epoch": 2, "oops\n' + b"".join(lines[2:]))
    rows, problems = jdir.scan_metrics()
    assert [r.epoch for r in rows] == [1] and "line 2 is damaged" in problems[0] and "2 line(s) after" in problems[0]

    (jdir.path / "metrics.jsonl").write_bytes(lines[0] + lines[2] + lines[3])  # epoch 2 missing
    rows, problems = jdir.scan_metrics()
    assert [r.epoch for r in rows] == [1] and "line 2 is epoch 3, expected 2" in problems[0]
    assert jdir.read_metrics() == rows


def test_done_with_missing_epochs_is_damaged(tmp_path: Path) -> None:
    _, jdir, _ = _healthy_job(tmp_path, epochs=3)
    lines = (jdir.path / "metrics.jsonl").read_text().splitlines(keepends=True)
    (jdir.path / "metrics.jsonl").write_text("".join(lines[:2]))  # cleanly one epoch short
    assert jdir.health() == ["result.json says done but metrics.jsonl holds 2 of its 3 epochs"]
    assert jdir.status() == "failed"


def test_damaged_spec_and_result_are_kept_aside_when_rewritten(tmp_path: Path) -> None:
    _, jdir, spec = _healthy_job(tmp_path)
    (jdir.path / "spec.json").write_bytes(b"[1, 2]")
    (jdir.path / "result.json").write_bytes(b'{"job_id": "x", "gr')
    fresh = JobDir(jdir.path)
    fresh.write_spec("g", spec)
    fresh.write_result(JobResult(job_id=spec.job_id(), grid="g", status="done", epochs=2))
    assert (jdir.path / "spec.json.damaged-1").read_bytes() == b"[1, 2]"
    assert (jdir.path / "result.json.damaged-1").read_bytes() == b'{"job_id": "x", "gr'
    assert fresh.health() == [] and fresh.read_spec() == spec
    assert len(fresh.notes) == 2 and "kept as spec.json.damaged-1" in fresh.notes[0]


def test_leftover_temporary_files_are_cleaned_and_nothing_else(tmp_path: Path) -> None:
    _, jdir, _ = _healthy_job(tmp_path)
    leftovers = [".result.json.ab_d1234.tmp", ".metrics.jsonl.zz9xy01q.tmp", ".checkpoint.pt.k2j3h4g5.tmp",
                 ".spec.json.aaaaaaaa.tmp", ".README.aside-2.abcdefgh.tmp"]
    kept = ["notes.tmp", ".result.json.tmp", ".lease.json.abcdefgh.tmp", ".other.txt.abcdefgh.tmp",
            "result.json.abcdefgh.tmp"]
    for name in leftovers + kept:
        (jdir.path / name).write_bytes(b"x")
    assert sorted(jdir.clean_temporary()) == sorted(leftovers)
    assert all((jdir.path / name).exists() for name in kept)
    assert jdir.health() == [] and jdir.clean_temporary() == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    import os

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "sub" / "result.json", "{}")
        assert (tmp_path / "sub" / "result.json").stat().st_mode & 0o777 == mode
        assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o777 & ~umask
    finally:
        os.umask(old)


def test_folder_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    path = tmp_path / "result.json"
    seen: list[tuple[str, bool]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, path.exists()))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_text(path, "new")
    assert seen[0] == ("file", False) and ("dir", True) in seen  # the file first, its folder entry after the rename


def test_folder_fsync_unsupported_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os
    import stat

    real = os.fsync

    def no_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    atomic_write_text(tmp_path / "result.json", "ok")
    assert (tmp_path / "result.json").read_text() == "ok"
