"""Results on disk: ``<root>/<grid>/<job_id>/{spec.json, metrics.jsonl, result.json, checkpoint.pt}``.

Every write goes to a temporary file in the same folder and is renamed over the old one, so a kill at any
moment leaves the old or the new file, never a torn one. Nothing here deletes a result.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from bioscale.spec import EpochMetrics, JobResult, JobSpec

SPEC, METRICS, RESULT, CHECKPOINT = "spec.json", "metrics.jsonl", "result.json", "checkpoint.pt"


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via ``write(file)`` to a temporary sibling, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


class JobDir:
    """One job's folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def job_id(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def set_aside(self, reason: str) -> list[str]:
        """Rename the checkpoint and metrics to ``*.aside-<n>`` (never delete) before a job starts over."""
        n = 1
        while any((self.path / f"{name}.aside-{n}").exists() for name in (CHECKPOINT, METRICS)):
            n += 1
        kept = []
        for name in (CHECKPOINT, METRICS):
            if (self.path / name).exists():
                os.replace(self.path / name, self.path / f"{name}.aside-{n}")
                kept.append(f"{name}.aside-{n}")
        atomic_write_text(self.path / f"README.aside-{n}", reason + "\n")
        return kept

    def write_spec(self, grid: str, spec: JobSpec) -> None:
        data = {"grid": grid, "job_id": spec.job_id(), "spec": spec.model_dump(mode="json")}
        text = json.dumps(data, indent=2, sort_keys=True)
        if not (self.path / SPEC).exists() or (self.path / SPEC).read_text() != text:
            atomic_write_text(self.path / SPEC, text)

    def read_spec(self) -> JobSpec:
        data = json.loads((self.path / SPEC).read_text())
        return JobSpec.model_validate(data["spec"])

    def write_metrics(self, rows: list[EpochMetrics]) -> None:
        """The whole file each epoch: a few hundred lines, and a torn append is impossible."""
        atomic_write_text(self.path / METRICS, "".join(r.model_dump_json() + "\n" for r in rows))

    def read_metrics(self) -> list[EpochMetrics]:
        path = self.path / METRICS
        if not path.exists():
            return []
        return [EpochMetrics.model_validate_json(line) for line in path.read_text().splitlines() if line]

    def write_result(self, result: JobResult) -> None:
        atomic_write_text(self.path / RESULT, result.model_dump_json(indent=2))

    def read_result(self) -> JobResult | None:
        path = self.path / RESULT
        if not path.exists():
            return None
        try:
            return JobResult.model_validate_json(path.read_text())
        except ValidationError:
            return None

    def status(self) -> str:
        """done | failed | diverged | running | pending; a 'running' job whose process is gone is pending."""
        result = self.read_result()
        if result is None:
            return "pending"
        if result.status == "running" and not _alive(result):
            return "pending"
        return result.status


def _alive(result: JobResult) -> bool:
    prov = result.provenance
    if prov is None or prov.pid is None:
        return False
    if prov.hostname != socket.gethostname():
        return True  # another machine's job: trust its record
    try:
        os.kill(prov.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def job_dir(self, grid: str, job_id: str) -> JobDir:
        return JobDir(self.root / grid / job_id)

    def jobs(self, grid: str | None = None) -> Iterator[tuple[str, JobDir]]:
        """(grid, job folder) for every job with a spec, in a stable order."""
        if not self.root.is_dir():
            return
        grids = [self.root / grid] if grid else sorted(p for p in self.root.iterdir() if p.is_dir())
        for gdir in grids:
            if not gdir.is_dir():
                continue
            for jdir in sorted(gdir.iterdir()):
                if (jdir / SPEC).is_file():
                    yield gdir.name, JobDir(jdir)

    def grids(self) -> list[str]:
        return sorted({g for g, _ in self.jobs()})


def load_rows(store: Store, grid: str | None = None) -> list[dict[str, Any]]:
    """One flat record per job: its resolved spec, result and per-epoch metrics (torch-free)."""
    rows = []
    for gname, jdir in store.jobs(grid):
        try:
            spec = jdir.read_spec()
        except (ValidationError, ValueError, KeyError):
            continue  # a spec from an incompatible version: skip rather than fail the whole report
        result = jdir.read_result()
        rows.append({"grid": gname, "job_id": jdir.job_id, "spec": spec, "status": jdir.status(),
                     "result": result, "metrics": jdir.read_metrics()})
    return rows
