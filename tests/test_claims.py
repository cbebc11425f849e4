"""Job claims: one holder at a time, heartbeats, takeover of expired or dead holders, never a stolen write."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bioscale import claims
from bioscale.errors import BioscaleError


def test_one_holder_at_a_time_and_release(tmp_path: Path) -> None:
    first = claims.acquire(tmp_path / "job", timeout_s=60)
    assert first is not None
    lease = claims.live_lease(tmp_path / "job")
    assert lease is not None and lease.pid == os.getpid() and lease.host == socket.gethostname()
    assert lease.pid_started is not None
    assert claims.acquire(tmp_path / "job", timeout_s=60) is None  # even the same process cannot take it twice
    first.release()
    assert claims.live_lease(tmp_path / "job") is None and not (tmp_path / "job" / claims.LEASE).exists()
    again = claims.acquire(tmp_path / "job", timeout_s=60)
    assert again is not None
    again.release()


def test_heartbeat_keeps_a_short_lease_alive(tmp_path: Path) -> None:
    with claims.acquire(tmp_path, timeout_s=0.8) as claim:
        first = claims.read_lease(tmp_path).heartbeat
        time.sleep(2.0)  # 2.5 timeouts: only the heartbeat keeps it live
        assert claims.live_lease(tmp_path) is not None and claims.read_lease(tmp_path).heartbeat > first
        assert claims.acquire(tmp_path, timeout_s=0.8) is None and not claim.lost


def _foreign(tmp_path: Path, heartbeat_age: float, timeout: float = 60.0) -> claims.Lease:
    now = time.time()
    lease = claims.Lease(host="another-host.example", pid=12345, pid_started=1.0, token="theirs",
                         claimed_at=now - heartbeat_age, heartbeat=now - heartbeat_age, timeout_s=timeout)
    (tmp_path / claims.LEASE).write_text(lease.model_dump_json())
    return lease


def test_another_hosts_lease_is_respected_until_its_heartbeat_expires(tmp_path: Path) -> None:
    _foreign(tmp_path, heartbeat_age=5.0)
    assert claims.live_lease(tmp_path) is not None
    assert claims.acquire(tmp_path, timeout_s=60) is None
    _foreign(tmp_path, heartbeat_age=61.0)  # its host died a minute ago
    claim = claims.acquire(tmp_path, timeout_s=60)
    assert claim is not None and claims.read_lease(tmp_path).token == claim.lease.token
    claim.release()


def test_a_dead_or_reused_pid_on_this_host_frees_the_job_at_once(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    now = time.time()
    dead = claims.Lease(host=socket.gethostname(), pid=proc.pid, pid_started=now - 1, token="dead",
                        claimed_at=now, heartbeat=now, timeout_s=3600)
    (tmp_path / claims.LEASE).write_text(dead.model_dump_json())
    assert claims.live_lease(tmp_path) is None
    reused = dead.model_copy(update={"pid": os.getpid(), "pid_started": 1.0})  # our pid, another start time
    (tmp_path / claims.LEASE).write_text(reused.model_dump_json())
    assert claims.live_lease(tmp_path) is None
    claim = claims.acquire(tmp_path, timeout_s=60)
    assert claim is not None
    claim.release()


def test_a_zombie_holder_is_not_alive(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(1.0)  # exited, not reaped: a zombie, which os.kill(pid, 0) would call alive
    try:
        started = claims._process_started(proc.pid)
        assert not claims.process_alive(proc.pid, started)
    finally:
        proc.wait()


def test_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    code = ("import sys, time\nfrom pathlib import Path\nfrom bioscale import claims\n"
            "c = claims.acquire(Path(sys.argv[1]), timeout_s=3600)\nprint('held', flush=True)\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert claims.acquire(tmp_path, timeout_s=60) is None
        proc.kill()
        proc.wait()
        claim = claims.acquire(tmp_path, timeout_s=60)  # no need to wait an hour for the heartbeat
        assert claim is not None
        claim.release()
    finally:
        proc.kill()


def test_a_stolen_lease_is_noticed_and_not_released(tmp_path: Path) -> None:
    claim = claims.acquire(tmp_path, timeout_s=60)
    _foreign(tmp_path, heartbeat_age=0.0)  # someone took over while our heartbeat stalled
    assert claim.renew() is False and claim.lost
    claim.release()
    assert claims.read_lease(tmp_path).token == "theirs"  # not ours to remove


def test_damaged_lease_protects_nothing_and_bad_timeout_is_refused(tmp_path: Path) -> None:
    (tmp_path / claims.LEASE).write_bytes(b"\xff\x00not json")
    claim = claims.acquire(tmp_path, timeout_s=60)
    assert claim is not None
    claim.release()
    with pytest.raises(BioscaleError, match="positive number of seconds"):
        claims.acquire(tmp_path, timeout_s=0)
