"""Where and with what a result was produced, recorded in every result.json."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
from pathlib import Path

import bioscale
from bioscale.spec import Provenance


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
                      started_at=now(), visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
