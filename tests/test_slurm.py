"""The slurm executor (bioscale.slurm) on submitit: resources, arrays, queue records, requeue on preemption.

No Slurm here: ``cluster: debug`` runs the tasks in this process, ``cluster: local`` in submitit's local
subprocesses (the same code path), and a fake ``sbatch``/``srun``/``squeue`` on PATH lets submitit's real
Slurm executor write and "submit" its sbatch scripts, which the tests read back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import bioscale
from bioscale.claims import read_lease
from bioscale.errors import BioscaleError, GridError
from bioscale.events import JobFinished, JobStarted
from bioscale.executors import EXECUTOR_PARAMS
from bioscale.provenance import scheduler_from_env
from bioscale.runner import expand_grid
from bioscale.slurm import Queue, SlurmExecutor, SlurmParams, Submission, read_submission, submitit_parameters
from bioscale.spec import JobResult, Resources
from bioscale.status import status_rows
from bioscale.store import Store

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("submitit")


def _grid(tmp_path: Path, grid: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def bioscale_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bioscale", *args], capture_output=True, text=True, cwd=REPO,
                          env=full, timeout=300)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """sbatch that keeps each script and answers with job ids 1001, 1002, ...; srun (submitit looks for it);
    squeue that prints ``squeue.txt`` (``ID|STATE`` lines)."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    queue = tmp_path / "squeue.txt"
    tools = {
        "sbatch": f'#!/bin/sh\nn=$(( $(cat {scripts}/count 2>/dev/null || echo 1000) + 1 ))\n'
                  f'echo $n > {scripts}/count\ncp "$1" {scripts}/$n.sh\necho "Submitted batch job $n"\n',
        "srun": "#!/bin/sh\nexit 0\n",
        "squeue": f"#!/bin/sh\ncat {queue} 2>/dev/null\nexit 0\n",
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return SimpleNamespace(scripts=scripts, queue=queue, bin=bin_dir)


def _scripts(fake: SimpleNamespace) -> dict[int, str]:
    return {int(p.stem): p.read_text() for p in sorted(fake.scripts.glob("*.sh"))}


# -- resources ---------------------------------------------------------------------------------------------
def test_resources_map_to_what_submitit_update_parameters_receives(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["resources"] = {"partition": "gpu", "gpus_per_job": 8, "cpus_per_task": 32, "mem": "256G",
                              "time": "2-00:00:00", "account": "lab", "qos": "high",
                              "sbatch": {"constraint": "a100", "exclusive": True}, "setup": ["module load cuda"]}
    _, jobs = expand_grid(_grid(tmp_path, tiny_grid), {"resources.time": "90", "resources.sbatch.mail-type": "END"})
    assert all(j.resources == jobs[0].resources for j in jobs)
    params = submitit_parameters(jobs[0].resources, SlurmParams(array_parallelism=4), "bioscale-tiny")
    assert params == {
        "name": "bioscale-tiny", "nodes": 1, "tasks_per_node": 1, "timeout_min": 90, "slurm_signal_delay_s": 90,
        "gpus_per_node": 8, "cpus_per_task": 32, "mem_gb": 256.0, "slurm_partition": "gpu", "slurm_account": "lab",
        "slurm_qos": "high", "slurm_additional_parameters": {"constraint": "a100", "exclusive": True,
                                                             "mail-type": "END"},
        "slurm_setup": ["module load cuda"], "slurm_array_parallelism": 4}
    assert jobs[0].job_id == expand_grid(_grid(tmp_path, {**tiny_grid, "resources": None}))[1][0].job_id  # not in ids
    assert Resources(time="30:00").minutes == 30 and Resources(time="1-12").minutes == 36 * 60
    assert Resources(mem="500M").mem == pytest.approx(500 / 1024) and Resources(mem=16).mem == 16


@pytest.mark.parametrize(("resources", "message"), [
    ({"time": 86400}, "quote it in YAML"),
    ({"time": "tomorrow"}, "a time limit is a Slurm time"),
    ({"mem": "64"}, "64G, 500M or 1T"),
    ({"gpus_per_job": -1}, "resources.gpus_per_job"),
    ({"sbatch": {"output": "x.log"}}, "--output is set by bioscale"),
    ({"sbatch": {"time": "1:00:00"}}, "use resources.time"),
    ({"gpu_per_job": 2}, "Did you mean 'gpus_per_job'"),
])
def test_bad_resources_are_grid_errors(tmp_path: Path, tiny_grid: dict, resources: dict, message: str) -> None:
    tiny_grid["resources"] = resources
    with pytest.raises(GridError, match=message):
        expand_grid(_grid(tmp_path, tiny_grid))


def test_override_keys_and_executor_params_are_checked(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["overrides"] = [{"where": {"rule.name": "fa"}, "set": {"resources.gpu_per_job": 2}}]
    with pytest.raises(GridError, match=r"overrides entry 1, set: unknown key 'resources.gpu_per_job'.*gpus_per_job"):
        expand_grid(_grid(tmp_path, tiny_grid))
    tiny_grid["overrides"] = [{"where": {"rule.name": "fa"}, "set": {"resources.time": "soon"}}]
    with pytest.raises(GridError, match=r"resources.time: Value error, a time limit"):
        expand_grid(_grid(tmp_path, tiny_grid))
    del tiny_grid["overrides"]
    tiny_grid["executor"] = {"name": "slurm", "params": {"cluster": "slrum"}}
    with pytest.raises(GridError, match=r"executor: executor 'slurm': params.cluster: Input should be 'slurm', "
                                        r"'local' or 'debug'"):
        expand_grid(_grid(tmp_path, tiny_grid))
    tiny_grid["executor"] = {"name": "slurm", "params": {"array_paralelism": 4}}
    with pytest.raises(GridError, match="takes the parameters"):
        expand_grid(_grid(tmp_path, tiny_grid))
    assert EXECUTOR_PARAMS["slurm"] == set(SlurmParams.model_fields)


def test_cannot_submit_is_one_paragraph(tmp_path: Path, tiny_grid: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    with pytest.raises(BioscaleError, match=r"sbatch and srun are not on PATH.*cluster: local"):
        SlurmExecutor.from_params({"cluster": "slurm"})
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(BioscaleError, match=r"needs submitit.*pip install 'bioscale\[slurm\]'"):
        SlurmExecutor.from_params({"cluster": "local"})


def test_cli_bad_slurm_input_exits_2_without_traceback(tmp_path: Path, tiny_grid: dict) -> None:
    grid, results = _grid(tmp_path, tiny_grid), tmp_path / "results"
    cases = [
        (["--executor", "slurm", "--time", "soon"], "resources.time"),
        (["--partition", "gpu"], "configure Slurm jobs, but this run uses the 'inline' executor"),
        (["--executor", "slurm", "--sbatch", "=x"], "--sbatch '=x'"),
        (["--executor", "slurm", "--mem", "64"], "64G, 500M or 1T"),
        (["--executor", "slurm"], "sbatch and srun are not on PATH"),
    ]
    no_slurm = {"PATH": str(Path(sys.executable).parent)}
    for args, message in cases:
        proc = bioscale_cli("run", str(grid), "--results", str(results), *args, env=no_slurm)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_slurm_cluster_needs_a_time_limit(tmp_path: Path, tiny_grid: dict, fake_slurm: SimpleNamespace) -> None:
    with pytest.raises(BioscaleError, match=r"4 of 4 jobs have no time limit.*--time 24:00:00"):
        bioscale.run_grid(_grid(tmp_path, tiny_grid), tmp_path / "results", executor=SlurmExecutor.from_params({}))
    assert not _scripts(fake_slurm)


# -- Slurm arrays (fake sbatch) ----------------------------------------------------------------------------
def test_per_job_resources_make_one_array_each_and_queued_jobs_are_not_resubmitted(
        tmp_path: Path, tiny_grid: dict, fake_slurm: SimpleNamespace) -> None:
    tiny_grid["resources"] = {"partition": "gpu", "gpus_per_job": 1, "time": "24:00:00", "mem": "16G",
                              "account": "lab", "qos": "normal", "sbatch": {"constraint": "a100"}}
    tiny_grid["overrides"] = [{"where": {"rule.name": "fa"}, "set": {"resources.gpus_per_job": 2}}]
    grid, results = _grid(tmp_path, tiny_grid), tmp_path / "results"
    executor = SlurmExecutor.from_params({"array_parallelism": 1, "stack": 1})  # a job per task
    summary = bioscale.run_grid(grid, results, executor=executor)
    assert summary.counts == {"pending": 4}
    scripts = _scripts(fake_slurm)
    assert sorted(scripts) == [1001, 1002]
    gpus = {n: next(line for line in text.splitlines() if "gpus-per-node" in line) for n, text in scripts.items()}
    assert gpus == {1001: "#SBATCH --gpus-per-node=1", 1002: "#SBATCH --gpus-per-node=2"}
    for text in scripts.values():
        for line in ("#SBATCH --array=0-1%1", "#SBATCH --partition=gpu", "#SBATCH --time=1440", "#SBATCH --mem=16GB",
                     "#SBATCH --account=lab", "#SBATCH --qos=normal", "#SBATCH --constraint=a100",
                     "#SBATCH --signal=USR2@90", "#SBATCH --open-mode=append", "#SBATCH --job-name=bioscale-tiny"):
            assert line in text.splitlines(), (line, text)
        assert "/tiny/.submitit/" in text and "%A_%a_0_log.out" in text

    store = Store(results)
    by_rule = {j.spec.rule.name: [] for j in summary.jobs}
    for job in summary.jobs:
        record = read_submission(store.job_dir(job.grid, job.job_id).path)
        assert record is not None and record.cluster == "slurm" and record.state == "submitted"
        by_rule[job.spec.rule.name].append(record.job_id)
        links = sorted(p.name for p in (store.job_dir(job.grid, job.job_id).path / "slurm").iterdir())
        assert links == [f"{record.job_id}.err", f"{record.job_id}.out"]
        assert os.readlink(store.job_dir(job.grid, job.job_id).path / "slurm" / links[1]).startswith("../../.submitit/")
    assert sorted(by_rule["bp"]) == ["1001_0", "1001_1"] and sorted(by_rule["fa"]) == ["1002_0", "1002_1"]
    assert executor.describe(store)[0].startswith("submitted 2 job(s) to Slurm as array 1001 (1001_0, 1001_1; "
                                                  "partition gpu, 1 GPU, 16 GB, time 1-00:00:00")

    # squeue still lists them: a second run submits nothing; `status` shows them queued with their ids
    fake_slurm.queue.write_text("1001_0|PENDING\n1001_1|RUNNING\n1002_0|PENDING\n1002_1|REQUEUED\n")
    again = SlurmExecutor.from_params({"stack": 1})
    assert bioscale.run_grid(grid, results, executor=again).counts == {"pending": 4}
    assert len(_scripts(fake_slurm)) == 2 and len(again.already_queued) == 4 and not again.submissions
    rows = status_rows(store, "tiny")
    assert {r["status"] for r in rows} == {"queued"} and {r["scheduler"] for r in rows} == \
        {"slurm 1001_0", "slurm 1001_1", "slurm 1002_0", "slurm 1002_1"}
    status = bioscale_cli("status", "tiny", "--results", str(results), env={"PATH": os.environ["PATH"]})
    assert status.returncode == 0 and "4 jobs: 4 queued" in status.stderr and "slurm 1002_1" in status.stdout

    # one array ended (gone from squeue): only its two jobs are submitted again, as one new array
    fake_slurm.queue.write_text("1002_0|PENDING\n1002_1|RUNNING\n1001_0|CANCELLED\n")
    third = SlurmExecutor.from_params({"stack": 1})
    bioscale.run_grid(grid, results, executor=third)
    assert sorted(_scripts(fake_slurm)) == [1001, 1002, 1003] and len(third.already_queued) == 2
    assert "#SBATCH --gpus-per-node=1" in _scripts(fake_slurm)[1003]


def test_queue_without_squeue_trusts_records_for_a_while(tmp_path: Path) -> None:
    now = time.time()
    record = Submission(cluster="slurm", state="submitted", job_id="7_0", folder=str(tmp_path), host="elsewhere",
                        user="me", pid=1, submitted_at=now - 3600)
    assert Queue(queued_timeout_h=2, squeue="").live([record]) == {"7_0"}
    assert Queue(queued_timeout_h=0.5, squeue="").live([record]) == set()
    ended = record.model_copy(update={"state": "ended"})
    assert Queue(queued_timeout_h=2, squeue="").live([ended]) == set()


def test_scheduler_ids_from_the_environment() -> None:
    slurm_array = {"SLURM_JOB_ID": "5008", "SLURM_ARRAY_JOB_ID": "5000", "SLURM_ARRAY_TASK_ID": "8",
                   "SLURM_RESTART_COUNT": "2", "SUBMITIT_EXECUTOR": "slurm"}
    found = scheduler_from_env(slurm_array)
    assert found is not None and (found.name, found.job_id, found.array_job_id, found.array_task_id,
                                  found.restarts) == ("slurm", "5000_8", "5000", "8", 2)
    assert scheduler_from_env({"SLURM_JOB_ID": "42"}).job_id == "42"  # a plain `bioscale run` inside sbatch
    local = scheduler_from_env({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "123", "SLURM_JOB_ID": "9"})
    assert (local.name, local.job_id) == ("local", "123")
    assert scheduler_from_env({}) is None


# -- debug cluster: in this process ------------------------------------------------------------------------
def test_debug_cluster_runs_in_process_like_inline(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["resources"] = {"cpus_per_task": 1}
    grid = _grid(tmp_path, tiny_grid)
    events: list = []
    summary = bioscale.run_grid(grid, tmp_path / "debug", overrides=["train.epochs=1"], on_event=events.append,
                                executor=SlurmExecutor.from_params({"cluster": "debug"}))
    assert summary.counts == {"done": 4}
    inline = bioscale.run_grid(grid, tmp_path / "inline", overrides=["train.epochs=1"])
    store = Store(tmp_path / "debug")
    for result in summary.results:
        jdir = store.job_dir(result.grid, result.job_id)
        record = read_submission(jdir.path)
        assert record.state == "ended" and record.job_id.startswith("DEBUG_")
        assert result.provenance.scheduler.name == "debug" and result.provenance.scheduler.job_id == record.job_id
        other = Store(tmp_path / "inline").job_dir(result.grid, result.job_id).read_metrics()
        assert [(m.train_loss, m.test_error) for m in jdir.read_metrics()] == \
            [(m.train_loss, m.test_error) for m in other]
    assert len(inline.results) == 4
    for job in summary.jobs:
        mine = [type(e) for e in events if e.job_id == job.job_id]
        assert mine[0] is JobStarted and mine[-1] is JobFinished


def test_a_task_trains_a_stack_and_every_member_records_its_submission(tmp_path: Path, tiny_grid: dict) -> None:
    """``stack: 2``: bp's two seeds in one task, fa's in another; each member has the task's scheduler id, its
    own result (naming its stack) and its own events, and computes what a solo run computes."""
    tiny_grid["resources"] = {"cpus_per_task": 1}
    grid = _grid(tmp_path, tiny_grid)
    events: list = []
    summary = bioscale.run_grid(grid, tmp_path / "debug", overrides=["train.epochs=2"], on_event=events.append,
                                executor=SlurmExecutor.from_params({"cluster": "debug", "stack": 2}))
    assert summary.counts == {"done": 4}
    store = Store(tmp_path / "debug")
    tasks: dict[str, set[str]] = {}
    for result in summary.results:
        record = read_submission(store.job_dir(result.grid, result.job_id).path)
        tasks.setdefault(record.job_id, set()).add(result.job_id)
        assert record.state == "ended" and result.provenance.scheduler.job_id == record.job_id
        assert result.provenance.stack is not None and result.job_id in result.provenance.stack
    assert sorted(len(v) for v in tasks.values()) == [2, 2]
    assert {frozenset(v) for v in tasks.values()} == {frozenset(r.provenance.stack) for r in summary.results}
    for job in summary.jobs:
        mine = [type(e) for e in events if e.job_id == job.job_id]
        assert mine[0] is JobStarted and mine[-1] is JobFinished
    bioscale.run_grid(grid, tmp_path / "inline", overrides=["train.epochs=2", "train.device=cpu"])
    for result in summary.results:
        alone = Store(tmp_path / "inline").job_dir(result.grid, result.job_id).read_metrics()
        stacked = store.job_dir(result.grid, result.job_id).read_metrics()
        assert [m.test_error for m in stacked] == pytest.approx([m.test_error for m in alone], abs=1.0)
        assert [m.train_loss for m in stacked] == pytest.approx([m.train_loss for m in alone], rel=1e-4)


def test_stack_is_a_slurm_parameter_with_a_device_default(tmp_path: Path, tiny_grid: dict) -> None:
    assert "stack" in EXECUTOR_PARAMS["slurm"] and SlurmParams().stack is None
    with pytest.raises(BioscaleError, match="stack"):
        SlurmExecutor.from_params({"cluster": "debug", "stack": 0})


# -- local cluster: submitit's subprocesses ----------------------------------------------------------------
@pytest.mark.slow
def test_local_cluster_end_to_end_with_wait(tmp_path: Path, tiny_grid: dict) -> None:
    """`bioscale run --executor slurm --wait` on cluster local: one task at a time, results done, scheduler
    ids in each result, logs under the job's folder, `bioscale status` as JSON."""
    tiny_grid["axes"] = {"rule.name": ["bp", "fa"]}
    tiny_grid["executor"] = {"name": "slurm", "params": {"cluster": "local", "poll_s": 0.3}}
    grid, results = _grid(tmp_path, tiny_grid), tmp_path / "results"
    proc = bioscale_cli("run", str(grid), "--results", str(results), "--set", "train.epochs=1", "--cpus-per-task",
                        "1", "--slurm-array-parallelism", "1", "--wait", "-q")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())
    assert "started 2 job(s) through submitit's local executor" in text and "finished: 2 done" in text
    rows = json.loads(bioscale_cli("status", str(grid), "--results", str(results), "--set", "train.epochs=1",
                                   "--format", "json").stdout)
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["scheduler"].startswith("local ") for r in rows)
    store = Store(results)
    for row in rows:
        jdir = store.job_dir("tiny", row["job_id"])
        record = read_submission(jdir.path)
        result = jdir.read_result()
        assert result.provenance.scheduler.job_id == record.job_id and row["scheduler"] == f"local {record.job_id}"
        out = jdir.path / "slurm" / f"{record.job_id}.out"
        assert out.is_symlink() and "Job completed successfully" in out.read_text()  # submitit's own log
        assert [line for line in (jdir.path / "claims.log").read_text().splitlines() if '"claimed"' in line]
    again = bioscale_cli("run", str(grid), "--results", str(results), "--set", "train.epochs=1", "--wait")
    assert again.returncode == 0 and "2 already finished, 0 to run" in again.stderr


def _wait_for(condition, timeout: float = 180.0, what: str = "") -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _claims(jdir: Path) -> list[dict]:
    return [json.loads(line) for line in (jdir / "claims.log").read_text().splitlines()]


@pytest.mark.slow
def test_resubmission_does_not_run_a_job_twice(tmp_path: Path, tiny_grid: dict) -> None:
    """A grid submitted again while its job is queued or running submits nothing; --wait then waits for the
    job submitted before; the job is claimed (trained) once."""
    tiny_grid["axes"] = {}
    tiny_grid["base"]["train"]["epochs"] = 3
    tiny_grid["base"]["dataset"]["params"]["train_size"] = 2048
    tiny_grid["executor"] = {"name": "slurm", "params": {"cluster": "local", "poll_s": 0.3}}
    tiny_grid["resources"] = {"cpus_per_task": 1}
    grid, results = _grid(tmp_path, tiny_grid), tmp_path / "results"
    first = SlurmExecutor.from_params({"cluster": "local"})
    summary = bioscale.run_grid(grid, results, executor=first)
    assert summary.counts == {"pending": 1} and len(first.submissions) == 1
    job = summary.jobs[0]
    jdir = Store(results).job_dir(job.grid, job.job_id)
    record = read_submission(jdir.path)
    second = SlurmExecutor.from_params({"cluster": "local"})
    assert bioscale.run_grid(grid, results, executor=second).results[0].error.endswith("already queued, left alone)")
    assert not second.submissions and read_submission(jdir.path).job_id == record.job_id
    events: list = []
    waited = SlurmExecutor.from_params({"cluster": "local", "wait": True, "poll_s": 0.3})
    final = bioscale.run_grid(grid, results, executor=waited, on_event=events.append)
    assert final.counts == {"done": 1} and not waited.submissions and len(waited.already_queued) == 1
    assert isinstance(events[0], JobStarted) and isinstance(events[-1], JobFinished)
    assert [c["event"] for c in _claims(jdir.path)] == ["claimed", "released"]
    assert read_submission(jdir.path).state == "ended"
    assert bioscale.run_grid(grid, results, executor=SlurmExecutor.from_params({"cluster": "local"})).results == []


@pytest.mark.slow
def test_preemption_signal_requeues_and_resumes_from_the_checkpoint(tmp_path: Path, tiny_grid: dict) -> None:
    """SIGUSR2, submitit's preemption/time-out signal, sent to the running task: the epoch in progress is
    dropped, the job is recorded pending (not failed) and releases its lease, submitit requeues the task,
    and it resumes from its last finished epoch under the same job id, ending with every epoch and the same
    numbers as an uninterrupted run."""
    tiny_grid["axes"] = {}
    tiny_grid["base"]["train"]["epochs"] = 10
    tiny_grid["base"]["dataset"]["params"]["train_size"] = 4096
    tiny_grid["base"]["arch"]["params"]["hidden"] = [256, 256]
    tiny_grid["resources"] = {"cpus_per_task": 1}
    grid, results = _grid(tmp_path, tiny_grid), tmp_path / "results"
    executor = SlurmExecutor.from_params({"cluster": "local"})
    summary = bioscale.run_grid(grid, results, executor=executor)
    job = summary.jobs[0]
    jdir = Store(results).job_dir(job.grid, job.job_id)
    _wait_for(lambda: len(jdir.read_metrics()) >= 1 and read_lease(jdir.path) is not None, what="the first epoch")
    task_pid = read_lease(jdir.path).pid
    os.kill(task_pid, signal.SIGUSR2)
    _wait_for(lambda: jdir.status() == "done", what="the requeued job to finish")
    claims = _claims(jdir.path)  # the task, its note on the requeue, the requeued task
    assert [c["event"] for c in claims] == ["claimed", "released"] * 3, claims
    stopped = claims[1]["note"]
    assert stopped.startswith("pending, ") and stopped.endswith("epochs (SIGUSR2)"), stopped
    assert claims[3]["note"].startswith("stopped by SIGUSR2 (Slurm preemption or time limit)")
    assert claims[0]["pid"] == claims[2]["pid"] == task_pid != claims[4]["pid"]  # a new process, the same job
    assert claims[5]["note"] == "done, 10 epochs"
    done_at_stop = int(stopped.split()[1])
    assert 1 <= done_at_stop < 10
    result = jdir.read_result()
    record = read_submission(jdir.path)
    assert result.status == "done" and result.epochs == 10 and result.error is None
    assert result.provenance.scheduler.job_id == record.job_id
    log = "".join((jdir.path / "slurm" / f"{record.job_id}.{s}").read_text() for s in ("out", "err"))
    assert "Requeued job" in log and "this job is preempted" in log

    inline = bioscale.run_grid(grid, tmp_path / "inline")  # the same job, never interrupted
    reference = Store(tmp_path / "inline").job_dir(job.grid, job.job_id).read_metrics()
    assert inline.counts == {"done": 1}
    assert [(m.train_loss, m.train_error, m.test_error) for m in jdir.read_metrics()] == \
        [(m.train_loss, m.train_error, m.test_error) for m in reference]


@pytest.mark.slow
def test_a_preempted_stack_requeues_and_every_member_resumes(tmp_path: Path, tiny_grid: dict) -> None:
    """SIGUSR2 to a task training a stack of 2: both members are recorded pending and released, submitit
    requeues the task, and both resume from their checkpoints to the numbers of an uninterrupted stack."""
    from bioscale.executors import InlineExecutor

    tiny_grid["axes"] = {"seed": [0, 1]}
    tiny_grid["base"]["train"]["epochs"] = 10
    tiny_grid["base"]["dataset"]["params"]["train_size"] = 4096
    tiny_grid["base"]["arch"]["params"]["hidden"] = [256, 256]
    tiny_grid["resources"] = {"cpus_per_task": 1}
    grid, results = _grid(tmp_path, tiny_grid), tmp_path / "results"
    summary = bioscale.run_grid(grid, results, executor=SlurmExecutor.from_params({"cluster": "local", "stack": 2}))
    jdirs = [Store(results).job_dir(job.grid, job.job_id) for job in summary.jobs]
    _wait_for(lambda: all(len(j.read_metrics()) >= 1 for j in jdirs) and read_lease(jdirs[0].path) is not None,
              what="the first epoch")
    task_pid = read_lease(jdirs[0].path).pid
    assert read_lease(jdirs[1].path).pid == task_pid  # one task holds both members
    os.kill(task_pid, signal.SIGUSR2)
    _wait_for(lambda: all(j.status() == "done" for j in jdirs), what="the requeued stack to finish")
    for jdir in jdirs:
        claims = _claims(jdir.path)
        assert [c["event"] for c in claims] == ["claimed", "released"] * 3, claims
        assert claims[3]["note"].startswith("stopped by SIGUSR2 (Slurm preemption or time limit)")
        assert claims[0]["pid"] == task_pid != claims[4]["pid"]
        assert claims[5]["note"] == "done, 10 epochs (stack of 2)"
    InlineExecutor(stack=2).run(summary.jobs, Store(tmp_path / "whole"))  # the same stack, never interrupted
    for job, jdir in zip(summary.jobs, jdirs, strict=True):
        reference = Store(tmp_path / "whole").job_dir(job.grid, job.job_id).read_metrics()
        assert [(m.train_loss, m.train_error, m.test_error) for m in jdir.read_metrics()] == \
            [(m.train_loss, m.train_error, m.test_error) for m in reference]


def test_a_job_not_requeued_is_recorded_failed_saying_why(tmp_path: Path, tiny_grid: dict) -> None:
    """What the task writes around submitit's requeue: pending with a note when it requeues, failed with the
    reason (and what to do) when submitit does not (timed out too often)."""
    from submitit.core.utils import UncompletedJobError

    from bioscale.slurm_task import _Requeue, _requeue

    _, jobs = expand_grid(_grid(tmp_path, tiny_grid))
    job, root = jobs[0], str(tmp_path / "results")
    jdir = Store(root).job_dir(job.grid, job.job_id)
    jdir.write_spec(job.grid, job.spec)
    jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status="pending", epochs=0))
    calls: list[int] = []
    _requeue(job, root, 30.0, _Requeue(signal.SIGUSR2, lambda signum, frame: calls.append(signum)))
    assert calls == [signal.SIGUSR2]
    result = jdir.read_result()
    assert result.status == "pending" and "submitit requeued it, and it resumes from epoch 0" in result.error

    def refuse(signum: int, frame: object) -> None:
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    with pytest.raises(UncompletedJobError):
        _requeue(job, root, 30.0, _Requeue(signal.SIGUSR2, refuse))
    result = jdir.read_result()
    assert result.status == "failed" and "not requeued: Job not requeued because: timed-out too many times" in \
        result.error and "--time" in result.error
    assert read_lease(jdir.path) is None  # every note was written under the job's lease, then released


def test_multi_gpu_jobs_must_ask_slurm_for_their_gpus(tmp_path: Path, tiny_grid: dict) -> None:
    """A job of train.distributed.nproc_per_node processes (torchrun on its node) needs that many GPUs from
    Slurm; a job over several nodes needs nnodes x nproc_per_node GPUs in all (each node's share as
    --gpus-per-node). Checked before anything is submitted."""
    from bioscale.spec import TrainSpec

    if "distributed" not in TrainSpec.model_fields:
        pytest.skip("train.distributed is not in this version")
    tiny_grid["resources"] = {"time": "1:00:00", "gpus_per_job": 4}
    grid = _grid(tmp_path, tiny_grid)
    executor = SlurmExecutor(SlurmParams())
    with pytest.raises(BioscaleError, match=r"run 8 processes on their node.*--gpus-per-job 8"):
        executor.check(expand_grid(grid, {"train.distributed.nproc_per_node": 8})[1])
    executor.check(expand_grid(grid, {"train.distributed.nproc_per_node": 8, "resources.gpus_per_job": 8})[1])
    executor.check(expand_grid(grid, {"train.distributed.nproc_per_node": 8, "train.device": "cpu"})[1])
    two_nodes = {"train.distributed.nnodes": 2, "train.distributed.nproc_per_node": 4}
    with pytest.raises(BioscaleError, match=r"2 nodes x 4 processes .* need 8 GPUs .*--gpus-per-job 8"):
        executor.check(expand_grid(grid, two_nodes)[1])
    with pytest.raises(BioscaleError, match=r"--gpus-per-job 8"):  # 9 does not split over 2 nodes
        executor.check(expand_grid(grid, {**two_nodes, "resources.gpus_per_job": 9})[1])
    executor.check(expand_grid(grid, {**two_nodes, "resources.gpus_per_job": 8})[1])
    with pytest.raises(BioscaleError, match=r"cluster debug runs every task in this process"):
        SlurmExecutor(SlurmParams(cluster="debug")).check(expand_grid(grid, two_nodes)[1])


def test_a_multi_node_job_asks_for_its_nodes_with_one_task_each(tmp_path: Path, tiny_grid: dict,
                                                                fake_slurm: SimpleNamespace) -> None:
    """Slurm: nnodes nodes, one task (one torchrun) per node, the job's GPUs split over the nodes, in an
    array of its own; cluster local: nnodes tasks on this machine (submitit's local executor has one node)."""
    tiny_grid["resources"] = {"gpus_per_job": 8, "time": "24:00:00"}
    tiny_grid["base"]["train"]["distributed"] = {"nproc_per_node": 8}
    tiny_grid["overrides"] = [{"where": {"rule.name": "fa"}, "set": {"train.distributed.nnodes": 2,
                                                                     "resources.gpus_per_job": 16}}]
    summary = bioscale.run_grid(_grid(tmp_path, tiny_grid), tmp_path / "results",
                                executor=SlurmExecutor.from_params({}))
    assert summary.counts == {"pending": 4}
    lines = {n: {ln for ln in text.splitlines() if ln.startswith("#SBATCH --n") or "gpus-per-node" in ln}
             for n, text in _scripts(fake_slurm).items()}
    assert lines == {1001: {"#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8"},
                     1002: {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8"}}
    resources = Resources(gpus_per_job=16, cpus_per_task=64, time="1:00:00")
    on_slurm = submitit_parameters(resources, SlurmParams(), "x", nnodes=2)
    assert (on_slurm["nodes"], on_slurm["tasks_per_node"], on_slurm["gpus_per_node"]) == (2, 1, 8)
    assert on_slurm["cpus_per_task"] == 64
    local = submitit_parameters(resources, SlurmParams(cluster="local"), "x", nnodes=2)
    assert (local["nodes"], local["tasks_per_node"]) == (1, 2)
    assert submitit_parameters(resources, SlurmParams(), "x")["gpus_per_node"] == 16  # one node: all of them


def test_what_each_node_of_a_slurm_allocation_launches(tmp_path: Path, tiny_grid: dict,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside task 1 of a 2-node allocation (a faked Slurm environment): node rank 1, the rendezvous on the
    first node of SLURM_JOB_NODELIST, an id of bioscale job + Slurm job + restart count (a requeue meets
    afresh, on another port), the same endpoint on both nodes; node 0 serves the rendezvous store."""
    from bioscale import distributed
    from bioscale.slurm_task import RDZV_PORTS, node_of

    _, jobs = expand_grid(_grid(tmp_path, tiny_grid), {"train.distributed.nnodes": 2,
                                                       "train.distributed.nproc_per_node": 4})
    job = jobs[0]
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "5001", "SLURM_ARRAY_JOB_ID": "5000",
           "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_NODELIST": "gpu-a[07-08]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NTASKS": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    node = node_of(job)
    host, port = node.endpoint.split(":")
    assert (node.rank, node.nnodes, host) == (1, 2, "gpu-a07")
    assert node.rdzv_id == f"{job.job_id}-5000_3-0" and RDZV_PORTS[0] <= int(port) < RDZV_PORTS[1]
    assert node.log_name == "torchrun.node1.log"
    cmd = distributed.torchrun_command("j.json", "res", nproc_per_node=4, nnodes=2, rdzv_endpoint=node.endpoint,
                                       rdzv_id=node.rdzv_id, node_rank=node.rank, is_host=node.rank == 0)
    assert {"--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d", f"--rdzv-endpoint=gpu-a07:{port}",
            f"--rdzv-id={node.rdzv_id}", "--node-rank=1", "--rdzv-conf=is_host=false"} <= set(cmd)
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert node_of(job).endpoint == node.endpoint and node_of(job).rank == 0  # both nodes meet at one place
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: a fresh rendezvous
    again = node_of(job)
    assert again.rdzv_id == f"{job.job_id}-5000_3-1" and again.endpoint != node.endpoint
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")  # submitted by hand with too few nodes: one sentence
    with pytest.raises(BioscaleError, match=r"nnodes=2 but its slurm allocation has 1 node"):
        node_of(job)
    monkeypatch.setenv("BIOSCALE_RDZV_PORT", "29400")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert node_of(job).endpoint == "gpu-a07:29400"
    assert node_of(expand_grid(_grid(tmp_path, tiny_grid))[1][0]) is None  # one node: plain torchrun
