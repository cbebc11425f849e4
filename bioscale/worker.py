"""One rank of a distributed job: ``python -m torch.distributed.run --nproc-per-node N ... -m bioscale.worker
JOB_JSON RESULTS_ROOT``.

``bioscale.distributed.launch`` starts it (through torchrun) for the inline and local executors; a Slurm
task starts torchrun with it on each node. JOB_JSON holds ``grid``, ``spec`` and optionally ``label`` and ``logging`` (a
job's ``spec.json`` will do). Every rank joins the process group torchrun describes and calls
``bioscale.train.run_job``: rank 0 claims the job and writes the results under RESULTS_ROOT; the others
train alongside it. A stop signal (SIGINT/SIGTERM, which torchrun forwards) leaves the job resumable; so
does the death of the launcher (``--launcher-pid``) or of torchrun's agent, which each rank watches, so that
no rank keeps training orphaned. Exit code: 0 when the job ran (whatever its outcome, which rank 0 records),
128 + signal when stopped, 1 when this rank failed (torchrun then stops the others and names this rank),
``PEER_LOST`` when rank 0 stopped because another rank did (the job recorded as resumable): not 0, so that
on a multi-node job this node's torchrun does not wait at its exit barrier for a node that is gone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from bioscale.claims import DEFAULT_TIMEOUT_S, process_alive

PEER_LOST = 75
"""Exit code of rank 0 when another rank stopped mid-job (EX_TEMPFAIL: resumable)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bioscale.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("job", type=Path, help="JSON file with the job's grid, spec and label (e.g. its spec.json)")
    p.add_argument("results", type=Path, help="the results directory (the store's root)")
    p.add_argument("--result-out", type=Path, help="rank 0 writes the job's result here as JSON (for the launcher)")
    p.add_argument("--events", type=Path, help="rank 0 appends its progress events here as JSON lines")
    p.add_argument("--plugin", action="append", default=[], help="plugin to load first (repeatable)")
    p.add_argument("--launcher-pid", type=int, help="stop when this process (the launcher) dies")
    p.add_argument("--lease-timeout", type=float, default=DEFAULT_TIMEOUT_S)
    return p


def read_job(path: Path):  # -> bioscale.job.Job
    """The job in ``path``: ``{"grid", "spec", "label"?}``."""
    from bioscale.errors import BioscaleError
    from bioscale.job import Job
    from bioscale.spec import JobSpec

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stop = data.get("stop_after")  # successive halving's rung (bioscale.promote)
        return Job(str(data["grid"]), JobSpec.model_validate(data["spec"]), str(data.get("label") or path.stem),
                   logging=tuple(str(name) for name in data.get("logging") or ()),
                   stop_after=int(stop) if stop is not None else None)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BioscaleError(f"cannot read the job from {path}: {type(exc).__name__}: {exc}") from exc


def _watch(pids: list[tuple[int, float | None]]) -> None:
    """SIGTERM this process (a clean, resumable stop) as soon as one of ``pids`` is gone."""
    while True:
        time.sleep(1.0)
        if not all(process_alive(pid, started) for pid, started in pids):
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _progress_writer(path: Path):
    """Append each event as a JSON line (one small write, so the launcher never reads half a line)."""
    import dataclasses

    def write(event: object) -> None:
        line = json.dumps(dataclasses.asdict(event)) + "\n"  # type: ignore[call-overload]
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)

    return write


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bioscale import distributed, interrupts
    from bioscale.catalog import load_plugins
    from bioscale.errors import BioscaleError
    from bioscale.interrupts import Interrupted
    from bioscale.spec import JobResult
    from bioscale.store import Store, atomic_write_text
    from bioscale.train import run_job

    if args.plugin:
        load_plugins(args.plugin)
    job = read_job(args.job)
    interrupts.install()
    # Slurm may send its preemption warning (SIGUSR2, --signal) to every process of the step; the task that
    # launched torchrun handles it and stops the ranks with SIGTERM, so a rank must not die of it.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    watched = [(os.getppid(), _started(os.getppid()))]
    if args.launcher_pid:
        watched.append((args.launcher_pid, _started(args.launcher_pid)))
    threading.Thread(target=_watch, args=(watched,), name="watch-launcher", daemon=True).start()

    try:
        group = distributed.init_from_env(job.spec.train.device)
        if group.world != distributed.world_size(job.spec):
            raise BioscaleError(f"torchrun started {group.world} processes but the job asks for "
                                f"{distributed.describe(job.spec)}")
        on_progress = _progress_writer(args.events) if group.is_main and args.events else None
        store = Store(args.results)
        distributed.set_job_dir(store.job_dir(job.grid, job.job_id).path)
        result: JobResult = run_job(job, store, on_progress, args.lease_timeout)
        if group.is_main and args.result_out is not None:
            atomic_write_text(args.result_out, result.model_dump_json())
        # a pending result without an interrupt: a collective failed because another rank stopped
        return PEER_LOST if group.is_main and result.status == "pending" else 0
    except Interrupted as exc:  # rank 0 recorded the job as resumable before this reached here
        return exc.exit_code
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
