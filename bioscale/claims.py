"""Job claims: before a process trains a job it takes a lease in the job's directory, so that any number of
``bioscale run`` processes, on one machine or on many hosts sharing the results directory, never train the
same job at the same time, and a job whose holder died is taken over and resumed from its checkpoint.

The lease (``lease.json``) says who holds the job (host, pid, the pid's start time), since when, and when the
holder last renewed it; a heartbeat thread renews it while the job trains. It is live while its heartbeat is
younger than its timeout and, on the holder's own host, while the holding process exists (so a killed
process's job is free at once, without waiting for the timeout; a zombie or a reused pid does not count).

Why a lease file and not only an OS lock: an OS lock (``filelock``/``fcntl``) vanishes with its process but
cannot say who holds a job or since when (``bioscale status``, the report's ``running``), and a host that
stops answering on a network filesystem can leave it held for as long as the server keeps it. So the lease
is data, and ``filelock`` guards the short read-check-write of taking, renewing and releasing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from bioscale.errors import BioscaleError
from bioscale.store import atomic_write_text

LEASE = "lease.json"
LOCK = ".lease.lock"
LOG = "claims.log"
"""One JSON line per claim and release (who, when, why): the job's history on a shared store."""
DEFAULT_TIMEOUT_S = 120.0
"""Seconds without a heartbeat after which another host may take a job over (``--lease-timeout``)."""
LOCK_WAIT_S = 60.0


class Lease(BaseModel):
    host: str
    pid: int
    pid_started: float | None
    """The holder's start time (seconds since the epoch), so a reused pid is not taken for the holder."""
    token: str
    claimed_at: float
    heartbeat: float
    timeout_s: float


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, started: float | None) -> bool:
    """The process exists, is not a zombie, and is the one that started at ``started`` (to 10 ms)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.01
    except psutil.Error:
        return False


def read_lease(job_dir: Path) -> Lease | None:
    """The lease on ``job_dir``, or None (no lease, or an unreadable one, which protects nothing)."""
    try:
        return Lease.model_validate_json((job_dir / LEASE).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def is_live(lease: Lease, now: float | None = None) -> bool:
    if (now if now is not None else time.time()) - lease.heartbeat > lease.timeout_s:
        return False
    if lease.host == socket.gethostname():
        return process_alive(lease.pid, lease.pid_started)
    return True  # another host's process: only its heartbeat can tell


def live_lease(job_dir: Path) -> Lease | None:
    """The lease that currently protects ``job_dir``, if any: what ``running`` means."""
    lease = read_lease(job_dir)
    return lease if lease is not None and is_live(lease) else None


def _log(job_dir: Path, lease: Lease, event: str, note: str = "") -> None:
    """Append one line (a single small O_APPEND write: lines of concurrent writers do not mix)."""
    line = json.dumps({"event": event, "host": lease.host, "pid": lease.pid, "token": lease.token,
                       "time": time.time(), "note": note}) + "\n"
    fd = os.open(job_dir / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(job_dir: Path) -> Iterator[None]:
    try:
        with FileLock(job_dir / LOCK, timeout=LOCK_WAIT_S):
            yield
    except Timeout:
        raise BioscaleError(f"could not lock {job_dir / LOCK} within {LOCK_WAIT_S:.0f} s; another process "
                            "holds it (or the filesystem does not support locks). Try again.") from None


class Claim:
    """A lease this process holds; renewed by a daemon thread until ``release``. ``lost`` turns true if
    another process took the job over (our heartbeat stalled past the timeout): stop without writing."""

    def __init__(self, job_dir: Path, lease: Lease) -> None:
        self.job_dir = job_dir
        self.lease = lease
        self.lost = False
        self.released = False
        self.note = ""
        """Why the job ended, for the log (set by the holder before releasing)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_dir.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = min(30.0, max(0.2, self.lease.timeout_s / 4))
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except Exception:  # a transient filesystem error: try again at the next beat
                continue

    def renew(self) -> bool:
        """Push the heartbeat forward; False (and ``lost``) if the lease is no longer ours."""
        with _locked(self.job_dir):
            current = read_lease(self.job_dir)
            if current is None or current.token != self.lease.token:
                self.lost = True
                return False
            self.lease = self.lease.model_copy(update={"heartbeat": time.time()})
            atomic_write_text(self.job_dir / LEASE, self.lease.model_dump_json())
            return True

    def release(self, note: str = "") -> None:
        """Stop the heartbeat and remove the lease if it is still ours (``note`` goes to the log)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.released:
            return
        self.released = True
        with _locked(self.job_dir):
            current = read_lease(self.job_dir)
            if current is not None and current.token == self.lease.token:
                (self.job_dir / LEASE).unlink(missing_ok=True)
                _log(self.job_dir, self.lease, "released", note or self.note)
            else:
                _log(self.job_dir, self.lease, "lost", "another process had taken the job over")

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(job_dir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Claim | None:
    """Take the job in ``job_dir`` for this process, or None if a live lease holds it. An expired lease
    (killed process, dead host) is taken over."""
    if not timeout_s > 0:
        raise BioscaleError(f"the lease timeout must be a positive number of seconds, not {timeout_s!r}.")
    job_dir.mkdir(parents=True, exist_ok=True)
    with _locked(job_dir):
        current = read_lease(job_dir)
        if current is not None and is_live(current):
            return None
        now = time.time()
        pid = os.getpid()
        lease = Lease(host=socket.gethostname(), pid=pid, pid_started=_process_started(pid),
                      token=uuid.uuid4().hex, claimed_at=now, heartbeat=now, timeout_s=float(timeout_s))
        atomic_write_text(job_dir / LEASE, lease.model_dump_json())
        took_over = f"took over from pid {current.pid} on {current.host}" if current is not None else ""
        _log(job_dir, lease, "claimed", took_over)
    return Claim(job_dir, lease)
