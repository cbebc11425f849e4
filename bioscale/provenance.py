"""Where and with what a result was produced, recorded in every result.json."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import bioscale
from bioscale.spec import Provenance, Scheduler


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the bioscale checkout, if it runs from one (with '+dirty' for local changes)."""
    root = Path(bioscale.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def collect(device: str | None = None) -> Provenance:
    try:
        import torch

        torch_version: str | None = torch.__version__
    except ImportError:
        torch_version = None
    return Provenance(bioscale_version=bioscale.__version__, torch_version=torch_version,
                      python_version=platform.python_version(), device=device,
                      hostname=socket.gethostname(), pid=os.getpid(), git_commit=git_commit(),
                      started_at=now(), visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                      scheduler=scheduler_from_env())


def scheduler_from_env(env: Mapping[str, str] | None = None) -> Scheduler | None:
    """The scheduler job this process runs in, from the variables Slurm and submitit set: a task submitted by
    ``--executor slurm`` (any cluster), or any ``bioscale run`` started inside a Slurm job."""
    env = os.environ if env is None else env
    executor = env.get("SUBMITIT_EXECUTOR", "")
    if executor == "local" and env.get("SUBMITIT_LOCAL_JOB_ID"):
        return Scheduler(name="local", job_id=env["SUBMITIT_LOCAL_JOB_ID"])
    if env.get("SUBMITIT_DEBUG_JOB_ID"):
        return Scheduler(name="debug", job_id=env["SUBMITIT_DEBUG_JOB_ID"])
    if not env.get("SLURM_JOB_ID"):
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    restarts = env.get("SLURM_RESTART_COUNT", "0")
    return Scheduler(name="slurm", job_id=f"{array}_{task}" if array and task else env["SLURM_JOB_ID"],
                     array_job_id=array or None, array_task_id=task or None,
                     restarts=int(restarts) if restarts.isdigit() else 0)
