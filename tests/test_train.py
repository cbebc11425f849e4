import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bioscale.grid import expand, load_grid, resolve
from bioscale.store import Store
from bioscale.train import run_job

REPO = Path(__file__).resolve().parent.parent


def _job(tmp_path: Path, grid: dict, **sets):
    from bioscale.job import Job

    raw = {**grid["base"], **sets}
    return Job("tiny", resolve(raw), "test")


def _numbers(path: Path) -> list[dict]:
    """Metrics without timings: what must be identical between two runs of the same job."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def test_job_runs_and_records_everything(tmp_path: Path, tiny_grid: dict) -> None:
    job = _job(tmp_path, tiny_grid, train={"epochs": 3, "batch_size": 16}, optim={"lr": 3e-3})
    events = []
    result = run_job(job, Store(tmp_path), events.append)
    assert result.status == "done", result.error
    jdir = tmp_path / "tiny" / job.job_id
    assert {p.name for p in jdir.iterdir()} == {"spec.json", "metrics.jsonl", "result.json", "checkpoint.pt",
                                               "claims.log", ".lease.lock"}  # the lease itself is released
    metrics = [json.loads(line) for line in (jdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert result.test_error == min(m["test_error"] for m in metrics)
    assert result.train_error == min(m["train_error"] for m in metrics)
    assert result.epochs == 3 and result.provenance and result.provenance.torch_version
    assert metrics[-1]["train_error"] < 50  # synthetic classes are separable: it learns
    assert events and events[-1].epoch == 3


def test_same_seed_same_numbers(tmp_path: Path, tiny_grid: dict) -> None:
    job = _job(tmp_path, tiny_grid)
    run_job(job, Store(tmp_path / "a"))
    run_job(job, Store(tmp_path / "b"))
    a, b = (_numbers(tmp_path / d / "tiny" / job.job_id / "metrics.jsonl") for d in "ab")
    assert a == b
    other = _job(tmp_path, tiny_grid, seed=5)
    run_job(other, Store(tmp_path / "c"))
    assert _numbers(tmp_path / "c" / "tiny" / other.job_id / "metrics.jsonl") != a


def test_divergence_is_recorded(tmp_path: Path, tiny_grid: dict) -> None:
    job = _job(tmp_path, tiny_grid, optim={"name": "sgd", "lr": 1e38})
    result = run_job(job, Store(tmp_path))
    assert result.status == "diverged"
    assert "nan" in (result.error or "").lower() or "inf" in (result.error or "").lower()


def test_failure_is_recorded_not_raised(tmp_path: Path, tiny_grid: dict) -> None:
    job = _job(tmp_path, tiny_grid, arch={"name": "fc", "params": {"hidden": [8]}}, train={"device": "cuda:7"})
    result = run_job(job, Store(tmp_path))
    assert result.status == "failed" and "cuda" in (result.error or "").lower()


def test_killed_job_resumes_from_its_last_epoch(tmp_path: Path, tiny_grid: dict) -> None:
    """Kill a real `bioscale run` after two epochs; the re-run finishes the job without redoing them, and
    ends with exactly the numbers of an uninterrupted run."""
    grid = dict(tiny_grid, axes={"rule.name": ["fa"]})
    grid["base"] = dict(grid["base"], train={"epochs": 20, "batch_size": 16},
                        dataset={"name": "synthetic", "params": {"train_size": 1024, "test_size": 256,
                                                                "shape": [1, 16, 16]}})
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    job = expand(load_grid(path))[0]
    metrics = tmp_path / "killed" / "tiny" / job.job_id / "metrics.jsonl"
    cmd = [sys.executable, "-m", "bioscale", "run", str(path), "--results", str(tmp_path / "killed"), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = metrics.read_text().splitlines()
    assert 2 <= len(before) < 20, "the job should have been killed mid-run"
    assert Store(tmp_path / "killed").job_dir("tiny", job.job_id).status() == "pending"

    subprocess.run(cmd, env=env, cwd=REPO, check=True)
    after = metrics.read_text().splitlines()
    assert len(after) == 20
    # epochs finished before the kill were not run again (their recorded timings are untouched) ...
    done_before = [json.loads(x)["epoch"] for x in before]
    assert after[: len(done_before) - 1] == before[: len(done_before) - 1]
    # ... and the resumed job ends exactly where an uninterrupted one does
    run_job(job, Store(tmp_path / "clean"))
    assert _numbers(metrics) == _numbers(tmp_path / "clean" / "tiny" / job.job_id / "metrics.jsonl")
    result = json.loads((metrics.parent / "result.json").read_text())
    assert result["status"] == "done" and result["epochs"] == 20


def test_corrupt_checkpoint_is_set_aside_not_fatal(tmp_path: Path, tiny_grid: dict) -> None:
    job = _job(tmp_path, tiny_grid)
    store = Store(tmp_path)
    assert run_job(job, store).status == "done"
    jdir = tmp_path / "tiny" / job.job_id
    old_metrics = (jdir / "metrics.jsonl").read_text()
    (jdir / "checkpoint.pt").write_bytes(b"\x80\x02 torn in half")
    (jdir / "result.json").unlink()  # as if killed: the job is pending again
    result = run_job(job, store)
    assert result.status == "done" and "could not be read" in (result.error or "")
    assert (jdir / "checkpoint.pt.aside-1").read_bytes() == b"\x80\x02 torn in half"
    assert (jdir / "metrics.jsonl.aside-1").read_text() == old_metrics  # nothing lost
    assert _numbers(jdir / "metrics.jsonl") == _numbers(jdir / "metrics.jsonl.aside-1")  # same seed, same run


def test_running_train_error_is_what_training_saw(tmp_path: Path, tiny_grid: dict) -> None:
    """`train_error: running` reports the errors of the training batches themselves (no clean pass)."""
    evald = _job(tmp_path, tiny_grid, train={"epochs": 2, "batch_size": 64})
    running = _job(tmp_path, tiny_grid, train={"epochs": 2, "batch_size": 64, "train_error": "running"})
    run_job(evald, Store(tmp_path / "a"))
    run_job(running, Store(tmp_path / "b"))
    a = _numbers(tmp_path / "a" / "tiny" / evald.job_id / "metrics.jsonl")
    b = _numbers(tmp_path / "b" / "tiny" / running.job_id / "metrics.jsonl")
    assert [r["test_error"] for r in a] == [r["test_error"] for r in b]  # same training either way
    assert [r["train_error"] for r in a] != [r["train_error"] for r in b]


def test_what_the_rule_did_to_the_model_is_recorded(tmp_path: Path, tiny_grid: dict) -> None:
    job = _job(tmp_path, tiny_grid, rule={"name": "fa", "params": {"last_layer_bp": True}}, train={"epochs": 1})
    result = run_job(job, Store(tmp_path))
    assert result.rule_setup == "converted 2 Linear; kept on backprop: layers.2.op"
    saved = json.loads((tmp_path / "tiny" / job.job_id / "result.json").read_text())
    assert saved["rule_setup"] == result.rule_setup
