"""Damaged stores: what a kill, a full disk or a careless copy can leave behind is named, set aside (never
deleted) or re-run from the last consistent point; never a traceback; no job is ever done with epochs missing.

Each kind of damage goes through a re-run (``run_job``, and ``bioscale run``) and through the report
(``load_frame`` + ``render``, and ``bioscale report``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from bioscale.grid import expand, load_grid
from bioscale.job import Job
from bioscale.report import load_frame, render
from bioscale.report.render import FORMATS, LAYOUTS
from bioscale.spec import EpochMetrics
from bioscale.store import Store
from bioscale.train import Trainer, run_job

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 2


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _killed(jdir: Path) -> None:
    """As if the run was killed mid-job: no final result, so the job resumes from its checkpoint."""
    (jdir / "result.json").unlink()


def _checkpoint_without_rule(jdir: Path) -> None:
    state = torch.load(jdir / "checkpoint.pt", weights_only=True)
    del state["rule"]
    torch.save(state, jdir / "checkpoint.pt")
    _killed(jdir)


def _leftover_temporaries(jdir: Path) -> None:
    for name in (".metrics.jsonl.k2j3h4g5.tmp", ".checkpoint.pt.ab_d1234.tmp", ".result.json.zz9xy01q.tmp"):
        (jdir / name).write_bytes(b"half a write")
    _killed(jdir)


# kind -> (how to damage a finished job's folder, the file damaged, what the re-run's result says about it)
DAMAGE: dict[str, tuple[Callable[[Path], None], str | None, str | None]] = {
    "truncated result.json": (lambda d: _truncate(d / "result.json"), "result.json", "result.json is damaged"),
    "non-UTF-8 result.json": (lambda d: (d / "result.json").write_bytes(b'{"job_id": "\xff\xfe", "status": "done"}'),
                              "result.json", "result.json is damaged"),
    "non-UTF-8 metrics.jsonl": (lambda d: (d / "metrics.jsonl").write_bytes(
        _lines(d / "metrics.jsonl")[0] + b'{"epoch": 2, "train_loss": \xff\xfe}\n'),
        "metrics.jsonl", "metrics.jsonl: line 2 is damaged"),
    "torn last metrics line": (lambda d: (d / "metrics.jsonl").write_bytes(
        _lines(d / "metrics.jsonl")[0] + _lines(d / "metrics.jsonl")[1][:30]),
        "metrics.jsonl", "is torn"),
    "spec.json holding a list": (lambda d: (d / "spec.json").write_bytes(b'["not", "a", "spec"]'),
                                 "spec.json", "spec.json holds a list"),
    "checkpoint without 'rule'": (_checkpoint_without_rule, "checkpoint.pt", "it has no 'rule'"),
    "metrics shorter than the checkpoint": (lambda d: (d / "metrics.jsonl").write_bytes(_lines(d / "metrics.jsonl")[0]),
                                            "metrics.jsonl", "it is at epoch 2 but metrics.jsonl holds 1"),
    "leftover temporary files": (_leftover_temporaries, None, None),
}
KINDS = list(DAMAGE)
# The report is torch-free and does not open checkpoints; a killed job (no result) is simply pending.
SEEN_BY_REPORT = {k for k in KINDS if k not in ("checkpoint without 'rule'", "leftover temporary files")}


def _grid(tmp_path: Path, tiny_grid: dict, seeds: int) -> Path:
    base = dict(tiny_grid["base"], arch={"name": "fc", "params": {"hidden": [16]}},
                dataset={"name": "synthetic", "params": {"train_size": 128, "test_size": 64, "shape": [1, 8, 8]}},
                train={"epochs": EPOCHS, "batch_size": 64, "eval_batch_size": 128})
    path = tmp_path / "dmg.yaml"
    path.write_text(yaml.safe_dump({"name": "dmg", "base": base, "axes": {"seed": list(range(seeds))}}))
    return path


def _numbers(path: Path) -> list[dict]:
    """Metrics without timings: identical between two runs of the same job."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]


def _damaged_store(tmp_path: Path, tiny_grid: dict, kinds: list[str]
                   ) -> tuple[Path, Store, dict[str, Job], dict[str, list[dict]], dict[str, bytes | None]]:
    """A store whose jobs all ran to the end, then job i got damage ``kinds[i]``. Returns the grid file, the
    store, the job per kind, each job's clean numbers and the damaged file's bytes."""
    grid = _grid(tmp_path, tiny_grid, len(kinds))
    store = Store(tmp_path / "results")
    jobs = dict(zip(kinds, expand(load_grid(grid)), strict=True))
    clean, damaged = {}, {}
    for kind, job in jobs.items():
        assert run_job(job, store).status == "done"
        jdir = store.job_dir(job.grid, job.job_id).path
        clean[kind] = _numbers(jdir / "metrics.jsonl")
        damage, name, _ = DAMAGE[kind]
        damage(jdir)
        damaged[kind] = (jdir / name).read_bytes() if name else None
    return grid, store, jobs, clean, damaged


def _check_repaired(store: Store, kind: str, job: Job, clean: list[dict], damaged: bytes | None,
                    noted: bool = True) -> None:
    jdir = store.job_dir(job.grid, job.job_id)
    result = jdir.read_result()
    assert result is not None and result.status == "done" and result.epochs == EPOCHS, (kind, result)
    assert jdir.health() == [], (kind, jdir.health())
    assert _numbers(jdir.path / "metrics.jsonl") == clean, kind  # same numbers as the undamaged run
    says = DAMAGE[kind][2]
    if says is not None and noted:
        assert says in (result.error or ""), (kind, result.error)  # the repair is reported in the result
    name = DAMAGE[kind][1]
    if name is not None:  # the damaged file is kept, never deleted
        kept = [p for p in jdir.path.iterdir() if p.name.startswith(name + ".") and p.read_bytes() == damaged]
        assert kept, (kind, sorted(p.name for p in jdir.path.iterdir()))
    assert not [p.name for p in jdir.path.iterdir() if p.name.endswith(".tmp")], kind


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_job_is_rerun_from_its_last_consistent_point(tmp_path: Path, tiny_grid: dict, kind: str) -> None:
    _, store, jobs, clean, damaged = _damaged_store(tmp_path, tiny_grid, [kind])
    job = jobs[kind]
    status = store.job_dir(job.grid, job.job_id).status()
    assert status in ("failed", "pending"), status  # the runner will pick it up
    run_job(job, store)
    _check_repaired(store, kind, job, clean[kind], damaged[kind])


def test_report_names_every_damaged_job(tmp_path: Path, tiny_grid: dict) -> None:
    _, store, jobs, _, _ = _damaged_store(tmp_path, tiny_grid, KINDS)
    frame = load_frame(store)
    assert len(frame) == len(KINDS)
    by_id = frame.set_index("job_id")
    for kind, job in jobs.items():
        row = by_id.loc[job.job_id]
        if kind in SEEN_BY_REPORT:
            assert row["status"] == "failed" and row["error"].startswith("damaged store: "), (kind, row["error"])
        else:
            assert row["status"] == "pending", kind
        assert row["epochs"] <= EPOCHS
    assert (frame["status"] != "done").all()  # nothing shows as done with epochs missing
    spec_less = by_id.loc[jobs["spec.json holding a list"].job_id]
    assert spec_less["rule"] == "?" and "spec.json holds a list" in spec_less["error"]
    for fmt in FORMATS:
        for layout in LAYOUTS:
            text = render(frame, fmt, layout)
            if fmt in ("table", "markdown") and layout == "settings":
                for kind in SEEN_BY_REPORT:
                    assert jobs[kind].job_id in text, (fmt, kind)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "bioscale", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def test_cli_report_then_run_on_a_damaged_store(tmp_path: Path, tiny_grid: dict) -> None:
    """`bioscale report` names the damaged jobs (exit 0, no traceback); `bioscale run` repairs every one."""
    grid, store, jobs, clean, damaged = _damaged_store(tmp_path, tiny_grid, KINDS)
    results = str(store.root)

    report = _cli("report", "--results", results)
    assert report.returncode == 0 and "Traceback" not in report.stderr + report.stdout, report.stderr
    for kind in SEEN_BY_REPORT:
        assert jobs[kind].job_id in report.stdout, kind
    as_json = _cli("report", "--results", results, "--format", "json")
    assert as_json.returncode == 0
    rows = {r["job_id"]: r for r in json.loads(as_json.stdout)}
    assert {rows[jobs[k].job_id]["status"] for k in SEEN_BY_REPORT} == {"failed"}

    run = _cli("run", str(grid), "--results", results, "-q")
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert run.returncode == 0, run.stderr
    for kind, job in jobs.items():
        # `bioscale run` records every job's spec before any job starts, so a damaged spec.json is kept aside
        # (spec.json.damaged-1) by the main process, not by the job: the job's own result cannot mention it.
        _check_repaired(store, kind, job, clean[kind], damaged[kind], noted=kind != "spec.json holding a list")
    again = _cli("report", "--results", results, "--format", "json")
    assert {r["status"] for r in json.loads(again.stdout)} == {"done"}


def test_damaged_lines_after_the_checkpoint_keep_the_resume(tmp_path: Path, tiny_grid: dict) -> None:
    """A checkpoint at epoch 2 and metrics whose lines after epoch 2 are damaged: the job resumes at epoch 2
    (no work lost), keeps the damaged file aside and says so."""
    grid = yaml.safe_load(_grid(tmp_path, tiny_grid, 1).read_text())
    two = expand(load_grid(_grid(tmp_path, tiny_grid, 1)))[0]
    grid["base"]["train"]["epochs"] = 3
    (tmp_path / "three.yaml").write_text(yaml.safe_dump(grid))
    three = expand(load_grid(tmp_path / "three.yaml"))[0]
    store = Store(tmp_path / "results")
    run_job(three, Store(tmp_path / "clean"))
    run_job(two, store)  # epochs 1-2 of the 3-epoch job are exactly these
    src, dst = store.job_dir(two.grid, two.job_id).path, store.job_dir(three.grid, three.job_id).path
    dst.mkdir(parents=True)
    (dst / "checkpoint.pt").write_bytes((src / "checkpoint.pt").read_bytes())
    damaged = (src / "metrics.jsonl").read_bytes() + b'{"epoch": 3, "tra\xff}\n'
    (dst / "metrics.jsonl").write_bytes(damaged)

    result = run_job(three, store)
    assert result.status == "done" and result.epochs == 3
    assert "resumed from epoch 2" in (result.error or "") and "line 3 is damaged" in (result.error or "")
    assert (dst / "metrics.jsonl.aside-1").read_bytes() == damaged
    assert _numbers(dst / "metrics.jsonl") == _numbers(tmp_path / "clean" / "dmg" / three.job_id / "metrics.jsonl")
    before = json.loads((dst / "metrics.jsonl").read_text().splitlines()[0])
    assert before == json.loads((src / "metrics.jsonl").read_text().splitlines()[0])  # epoch 1 not re-run


def test_never_done_with_epochs_missing(tmp_path: Path, tiny_grid: dict) -> None:
    job = expand(load_grid(_grid(tmp_path, tiny_grid, 1)))[0]
    trainer = Trainer(job, Store(tmp_path).job_dir(job.grid, job.job_id))
    trainer.metrics = [EpochMetrics(epoch=1, train_loss=1.0, train_error=5.0, test_error=5.0, epoch_time_s=0.1)]
    result = trainer.partial_result("done")
    assert result.status == "failed" and "epochs 1 of 1-2" in (result.error or "")
    trainer.metrics.append(trainer.metrics[0].model_copy(update={"epoch": 2}))
    assert trainer.partial_result("done").status == "done"
    assert trainer.partial_result("diverged").status == "diverged"  # only done is held to the full count
