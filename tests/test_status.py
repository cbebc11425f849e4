"""``bioscale status``: per job state, epochs, last and best score, lease holder and ETA; ``--watch``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bioscale.claims import LEASE, Lease
from bioscale.runner import plan
from bioscale.spec import EpochMetrics, JobResult
from bioscale.status import duration, eta_s, status_rows, status_table, summary_line
from bioscale.store import Store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path: Path, grid_writer, tiny_grid: dict) -> tuple[Store, Path, list[str]]:
    """tiny's 4 jobs (4 epochs planned): done, running (2 epochs, a live lease), failed (1 epoch), pending."""
    tiny_grid["base"]["train"]["epochs"] = 4
    grid = grid_writer(tmp_path, tiny_grid)
    planned = plan(grid, tmp_path / "results")
    ids = [job.job_id for job in planned.jobs]
    errors = {0: [12.0, 9.0, 10.0, 11.0], 1: [20.0, 15.0], 2: [30.0]}  # test error per epoch
    for n, job in enumerate(planned.jobs):
        jdir = planned.store.job_dir(job.grid, job.job_id)
        jdir.write_spec(job.grid, job.spec)
        if n == 3:
            continue
        jdir.write_metrics([EpochMetrics(epoch=i + 1, train_loss=1.0, train_error=5.0, test_error=e,
                                         epoch_time_s=10.0 * (i + 1), lr=1e-3) for i, e in enumerate(errors[n])])
        status = {0: "done", 1: "running", 2: "failed"}[n]
        jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status=status, epochs=len(errors[n]),
                                    error="boom\nmore" if status == "failed" else None))
        if status == "running":
            now = time.time()
            lease = Lease(host=socket.gethostname(), pid=os.getpid(), pid_started=None, token="t", claimed_at=now,
                          heartbeat=now, timeout_s=1e9)
            (jdir.path / LEASE).write_text(lease.model_dump_json())
    return planned.store, grid, ids


def test_rows_say_state_epochs_scores_holder_and_eta(store: tuple) -> None:
    st, grid, ids = store
    rows = {r["job_id"]: r for r in status_rows(st, "tiny")}
    done, running, failed, pending = (rows.get(i) for i in ids)
    assert (pending["status"], pending["epochs"], pending["last"], pending["best"]) == ("pending", 0, None, None)
    assert (done["status"], done["epochs"], done["of"], done["last"], done["best"], done["eta_s"]) == \
        ("done", 4, 4, 11.0, 9.0, None)
    assert running["status"] == "running" and (running["last"], running["best"]) == (15.0, 15.0)
    assert running["eta_s"] == pytest.approx(15.0 * 2)  # median epoch time x epochs left
    assert running["where"] == f"{socket.gethostname()} pid {os.getpid()}"
    assert failed["status"] == "failed" and failed["note"] == "boom" and failed["eta_s"] is None
    from bioscale.runner import expand_grid

    with_grid = status_rows(st, jobs=expand_grid(grid, [])[1])  # in the grid's order
    assert [r["status"] for r in with_grid] == ["done", "running", "failed", "pending"]
    assert summary_line(with_grid) == "4 jobs: 1 running, 1 pending, 1 done, 1 failed"


def test_the_table_fits_80_columns_and_shows_what_matters(store: tuple) -> None:
    st = store[0]
    console = Console(width=80, record=True, force_terminal=False)
    console.print(status_table(status_rows(st, "tiny")))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "running" in text and "2/4" in text and "15.00" in text and "9.00" in text


def test_duration_and_eta() -> None:
    assert [duration(s) for s in (None, 40, 180, 3900)] == ["", "~40s", "~3m", "~1h05m"]
    assert eta_s([], 5) is None
    rows = [EpochMetrics(epoch=i, train_loss=1, epoch_time_s=t) for i, t in ((1, 4.0), (2, 6.0), (3, 100.0))]
    assert eta_s(rows, 10) == pytest.approx(6.0 * 7)  # the median, not the mean: one slow epoch does not count


def test_watch_redraws_until_ctrl_c(store: tuple) -> None:
    st, _, _ = store
    proc = subprocess.Popen([sys.executable, "-m", "bioscale", "status", "tiny", "--results", str(st.root),
                             "--watch", "--interval", "0.5"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"})
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "running" in out and "Ctrl-C stops watching" in out
