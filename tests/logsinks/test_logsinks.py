"""The sinks' contract (parametrised over ``SINKS``): chosen per grid (never in a job id), checked before any
job runs, carried to the trainer, and never able to fail or lose a job."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bioscale import runner
from bioscale.distributed import job_payload
from bioscale.errors import BioscaleError
from bioscale.logsinks import SINKS, with_sinks
from bioscale.preflight import PreflightError, preflight
from bioscale.spec import GridSpec
from bioscale.store import Store
from bioscale.train import run_job
from bioscale.worker import read_job

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(SINKS))
def test_each_sink_module_opens_and_installs_by_its_extra(name: str) -> None:
    info = SINKS[name]
    assert callable(importlib.import_module(info.module).open_sink)
    extras = _extras()
    assert any(dep.startswith(info.package) for dep in extras[info.extra])
    assert any(dep.startswith(info.package) for dep in extras["dev"])  # CI installs every sink


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_logging_is_not_part_of_any_job_id(tiny_grid: dict) -> None:
    plain = runner.expand_grid(GridSpec.model_validate(tiny_grid))[1]
    logged = runner.expand_grid(GridSpec.model_validate({**tiny_grid, "logging": list(SINKS)}))[1]
    assert [j.job_id for j in plain] == [j.job_id for j in logged]
    assert GridSpec.model_validate({**tiny_grid, "logging": "wandb"}).logging == ["wandb"]
    assert all(j.logging == tuple(SINKS) for j in logged) and all(j.logging == () for j in plain)


def test_unknown_sink_is_refused_with_a_suggestion(tiny_grid: dict, tmp_path: Path) -> None:
    with pytest.raises(BioscaleError, match=r"unknown log sink 'tensorbord'\. Did you mean 'tensorboard'"):
        runner.expand_grid(_grid_file(tmp_path, {**tiny_grid, "logging": ["tensorbord"]}))
    planned = runner.plan(GridSpec.model_validate(tiny_grid), tmp_path / "results")
    with pytest.raises(BioscaleError, match="--log: unknown log sink 'wandbb'"):
        with_sinks(planned, ["wandbb"])


def _grid_file(tmp_path: Path, grid: dict) -> Path:
    import yaml

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_log_flag_adds_to_the_grid_and_none_turns_them_off(tiny_grid: dict, tmp_path: Path) -> None:
    planned = runner.plan(GridSpec.model_validate({**tiny_grid, "logging": ["wandb"]}), tmp_path / "results")
    both = with_sinks(planned, ["tensorboard"])
    assert both.grid.logging == ["wandb", "tensorboard"]
    assert all(j.logging == ("wandb", "tensorboard") for j in [*both.jobs, *both.todo])
    assert [j.job_id for j in both.jobs] == [j.job_id for j in planned.jobs]
    assert all(j.logging == () for j in with_sinks(planned, ["none"]).todo)


@pytest.mark.parametrize("name", list(SINKS))
def test_a_sink_travels_to_a_distributed_rank(name: str, tiny_grid: dict, tmp_path: Path) -> None:
    job = runner.expand_grid(GridSpec.model_validate({**tiny_grid, "logging": [name]}))[1][0]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_payload(job)))
    assert read_job(path).logging == (name,)


@pytest.mark.parametrize("name", list(SINKS))
def test_missing_package_stops_the_run_before_any_job(name: str, tiny_grid: dict, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == SINKS[name].package else real(n, *a))
    planned = runner.plan(GridSpec.model_validate({**tiny_grid, "logging": [name]}), tmp_path / "results")
    with pytest.raises(PreflightError) as info:
        preflight(planned)
    assert f"pip install 'bioscale[{SINKS[name].extra}]'" in str(info.value) and "[all 4 jobs]" in str(info.value)
    assert not (tmp_path / "results").exists()


def test_cli_names_the_extra(tiny_grid: dict, tmp_path: Path) -> None:
    """The message a user sees, exit code 2, no traceback (a sink module's package hidden from the child)."""
    grid = _grid_file(tmp_path, {**tiny_grid, "logging": ["tensorboard"]})
    code = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda n, *a: None if n == 'tensorboard' else real(n, *a); "
            "from bioscale.cli import main; sys.argv = ['bioscale', 'run', sys.argv[1], '--results', sys.argv[2]]; "
            "main()")
    proc = subprocess.run([sys.executable, "-c", code, str(grid), str(tmp_path / "r")], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "bioscale[tensorboard]" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failing_sink_is_a_note_never_a_failure(sink_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bioscale.logsinks.tensorboard import TensorBoardSink

    def full(self, metrics, values) -> None:
        if metrics.epoch == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardSink, "epoch", full)
    job = sink_job("tensorboard", epochs=3)
    result = run_job(job, Store(tmp_path))
    assert result.status == "done" and result.epochs == 3
    assert "logging: tensorboard stopped in epoch 2 (OSError: [Errno 28] No space left on device)" in result.error
    rows = (tmp_path / "tiny" / job.job_id / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3


def test_a_sink_that_cannot_start_is_a_note(sink_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that is there but broken (or vanished after preflight): the job runs and says so."""
    import bioscale.logsinks as logsinks

    monkeypatch.setattr(logsinks, "missing_package", lambda name: f"logging: {name} needs the 'x' package")
    result = run_job(sink_job("tensorboard", epochs=1), Store(tmp_path))
    assert result.status == "done" and "logging: tensorboard needs the 'x' package" in result.error


def test_only_rank_0_of_a_distributed_job_logs(tiny_grid: dict, tmp_path: Path) -> None:
    """``--log`` reaches torchrun's ranks through the job file; rank 0 alone writes one set of events, equal to
    the metrics."""
    from tbparse import SummaryReader

    grid = {**tiny_grid, "axes": {"seed": [0]}}
    grid["base"] = {**grid["base"], "train": {**grid["base"]["train"], "epochs": 2, "device": "cpu"}}
    cmd = [sys.executable, "-m", "bioscale", "run", str(_grid_file(tmp_path, grid)), "--results",
           str(tmp_path / "r"), "-q", "--nproc-per-node", "2", "--log", "tensorboard"]
    subprocess.run(cmd, check=True, cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    (job_dir,) = (tmp_path / "r" / "tiny").iterdir()
    assert len(list((job_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    frame = SummaryReader(str(job_dir / "tensorboard")).scalars
    errors = frame[frame["tag"] == "test/error"]
    rows = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    assert list(errors["step"]) == [1, 2]
    assert list(errors["value"]) == pytest.approx([row["test_error"] for row in rows], rel=1e-6)
