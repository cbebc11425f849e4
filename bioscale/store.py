"""Results on disk: ``<root>/<grid>/<job_id>/{spec.json, metrics.jsonl, result.json, checkpoint.pt}``.

Every write goes to a temporary file in the same folder, is fsynced, renamed over the old one, and the folder
entry is fsynced too, so a kill or a power cut at any moment leaves the old or the new file, never a torn one.
Files get the mode the user's umask gives, like any other file they create (a store shared by a group stays
readable to it). Nothing here deletes a result: damaged or inconsistent files are renamed aside.

Reading never raises on damaged content (truncated or non-UTF-8 JSON, a file of the wrong shape, metrics that
stop short of what the result claims): ``JobDir.inspect`` returns what could be read and names each problem,
so the runner re-runs a damaged job from its last consistent point and the report lists it instead of crashing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from bioscale import interrupts
from bioscale.ids import fill_baselines
from bioscale.spec import EpochMetrics, JobResult, JobSpec, Status

SPEC, METRICS, RESULT, CHECKPOINT = "spec.json", "metrics.jsonl", "result.json", "checkpoint.pt"
JOB_FILES = (SPEC, METRICS, RESULT, CHECKPOINT)
RERUN = "rerun.txt"
"""Written by ``bioscale run --force`` (``bioscale.force``) when it sets a finished job's files aside: why this
run of the job exists. Every result written while it is there carries it as a note; the next --force sets it
aside with that run's files."""

# The default results directory is runs/ (git-ignored), not results/: results/ ships with the repository as
# the record of what we ran and report (results/table1-mnist5k). Running into it by default made a fresh
# clone's `bioscale run grids/table1-mnist5k.yaml` find every job finished and do nothing, and a user's own
# runs would mix with the shipped ones in git. `bioscale report` without --results reads runs/ and names
# results/ when runs/ has nothing (``SHIPPED_RESULTS``); `make demo` writes runs/demo.
DEFAULT_RESULTS = Path("runs")
SHIPPED_RESULTS = Path("results")

# ``atomic_write``'s temporary siblings: ``.<name>.<8 random characters from mkstemp>.tmp``. Only the names
# this module writes in a job folder match, so cleaning them up can never touch anything else.
_TEMPORARY = re.compile(r"^\.(?:spec\.json|metrics\.jsonl|result\.json|checkpoint\.pt|README\.aside-\d+)"
                        r"\.[a-z0-9_]{8}\.tmp$")
# fsync on a folder is not supported everywhere (some network and FUSE file systems); there it is skipped.
_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


# -- writing ---------------------------------------------------------------------------------------------
def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_setting() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


# Where /proc is missing (macOS), the umask at import: reading it with os.umask means setting it for a moment,
# which races with other threads creating files, so that is done once, before any thread of ours exists.
_UMASK_AT_IMPORT = _umask_from_proc()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _umask_by_setting()


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status; elsewhere: at import)."""
    found = _umask_from_proc()
    return _UMASK_AT_IMPORT if found is None else found


def fsync_dir(path: Path) -> None:
    """Make the renames in folder ``path`` durable: without it a power cut can undo a rename even after the
    file's own fsync. Skipped where the file system does not support fsync on a folder."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform that cannot open folders (Windows): nothing more to do
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` that also fsyncs the parent of each folder it creates, so a new job folder survives a crash."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via ``write(file)`` to a temporary sibling, fsync, rename over ``path``, fsync the folder.

    The file gets mode ``0o666 & ~umask`` like any file the user creates (mkstemp alone gives 0600). A stop
    signal that arrives meanwhile is raised once the file is in place (``bioscale.interrupts.deferred``)."""
    with interrupts.deferred():  # a Ctrl-C or preemption signal lands after the write, never inside it
        _make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# -- reading without raising -----------------------------------------------------------------------------
def _read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    """(content, None), (None, None) when the file does not exist, or (None, the problem in words)."""
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or type(exc).__name__})"


def _why(exc: Exception) -> str:
    """The first line of what is wrong, short enough for one line of a report."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        more = f" and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
        return f"{loc + ': ' if loc else ''}{err['msg']}{more}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(value), "a number")


def _keep_aside(path: Path, tag: str) -> str | None:
    """Rename ``path`` to ``<name>.<tag>-<n>`` (the first free n); returns the new name, None if it was gone."""
    n = 1
    while (path.parent / f"{path.name}.{tag}-{n}").exists():
        n += 1
    target = path.parent / f"{path.name}.{tag}-{n}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None  # another process set it aside first
    fsync_dir(path.parent)
    return target.name


@dataclass
class JobState:
    """What one job's folder holds, read without raising.

    ``metrics`` is the consistent prefix of metrics.jsonl (epochs 1..k, in order); ``problems`` names, in
    words, everything damaged or inconsistent (empty for a healthy job); ``spec_data`` is spec.json's raw
    ``spec`` mapping where it parsed as JSON but does not validate (to name the job in a report)."""

    spec: JobSpec | None = None
    spec_data: dict[str, Any] | None = None
    result: JobResult | None = None
    metrics: list[EpochMetrics] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leased: bool = False
    """A live lease holds the job (``bioscale.claims``): some process is training it now."""

    @property
    def status(self) -> Status:
        """done | failed | diverged | running | pending. ``running`` means a live lease; a job recorded
        running whose holder is gone is pending (resumable). A damaged job is ``failed`` (an error to retry:
        the runner re-runs it from its last consistent point)."""
        if self.leased:
            return "running"
        if self.result is not None and self.result.status == "running":
            return "failed" if self.problems else "pending"
        if self.problems:
            return "failed"
        return "pending" if self.result is None else self.result.status


class JobDir:
    """One job's folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notes: list[str] = []
        """What this object set aside as damaged while writing (for the trainer to report in the result)."""

    @property
    def job_id(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def set_aside(self, reason: str, names: tuple[str, ...] = (CHECKPOINT, METRICS)) -> list[str]:
        """Rename the checkpoint and metrics to ``*.aside-<n>`` (never delete) before a job starts over."""
        n = 1
        while any((self.path / f"{name}.aside-{n}").exists() for name in (*names, "README")):
            n += 1
        kept = []
        for name in names:
            if (self.path / name).exists():
                os.replace(self.path / name, self.path / f"{name}.aside-{n}")
                kept.append(f"{name}.aside-{n}")
        fsync_dir(self.path)
        atomic_write_text(self.path / f"README.aside-{n}", reason + "\n")
        return kept

    def clean_temporary(self) -> list[str]:
        """Remove the temporary files that a kill in the middle of ``atomic_write`` left in this folder; returns
        their names. Only ``.<job file>.XXXXXXXX.tmp`` names are touched. Call it only while this process holds
        the job (right after claiming it): a live writer's temporary file looks the same."""
        removed: list[str] = []
        try:
            entries = sorted(self.path.iterdir())
        except OSError:
            return removed
        for p in entries:
            if _TEMPORARY.match(p.name) and p.is_file() and not p.is_symlink():
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                removed.append(p.name)
        return removed

    # -- spec ----------------------------------------------------------------------------------------------
    def write_spec(self, grid: str, spec: JobSpec) -> None:
        """Record the job's spec; a damaged spec.json is kept aside (``spec.json.damaged-<n>``), not overwritten."""
        data = {"grid": grid, "job_id": spec.job_id(), "spec": spec.model_dump(mode="json")}
        text = json.dumps(data, indent=2, sort_keys=True)
        old, _ = _read_bytes(self.path / SPEC)
        if old == text.encode():
            return
        if old is not None or (self.path / SPEC).exists():
            problem = self._load_spec()[2]
            if problem is not None:
                self._keep_damaged(SPEC, problem)
        atomic_write_text(self.path / SPEC, text)

    def read_spec(self) -> JobSpec | None:
        """The job's spec; None when spec.json is missing or damaged (``inspect`` says why). Never raises."""
        return self._load_spec()[0]

    def _load_spec(self) -> tuple[JobSpec | None, dict[str, Any] | None, str | None]:
        data, problem = _read_bytes(self.path / SPEC)
        if data is None:
            return None, None, problem or "spec.json is missing"
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return None, None, f"spec.json is not valid JSON ({_why(exc)})"
        if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
            what = f"{_kind(doc)}" if not isinstance(doc, dict) else "an object without a 'spec' mapping"
            return None, None, f"spec.json holds {what}, not a job's spec"
        try:
            spec_data = fill_baselines(doc["spec"])  # a field added since: what this job was computed under
            return JobSpec.model_validate(spec_data), spec_data, None
        except (ValidationError, ValueError, TypeError, RecursionError) as exc:
            return None, doc["spec"], f"spec.json does not match this version of bioscale ({_why(exc)})"

    # -- metrics -------------------------------------------------------------------------------------------
    def write_metrics(self, rows: list[EpochMetrics]) -> None:
        """The whole file each epoch: a few hundred lines, and a torn append is impossible."""
        atomic_write_text(self.path / METRICS, "".join(r.model_dump_json() + "\n" for r in rows))

    def read_metrics(self) -> list[EpochMetrics]:
        """The consistent epochs of metrics.jsonl (see ``scan_metrics``). Never raises."""
        return self.scan_metrics()[0]

    def scan_metrics(self) -> tuple[list[EpochMetrics], list[str]]:
        """(the consistent prefix of metrics.jsonl: whole lines for epochs 1, 2, ... k; what is wrong after it).

        A torn last line (an unterminated partial record) is dropped; a damaged or out-of-order line further
        up ends the consistent part: the lines after it cannot be trusted either."""
        data, problem = _read_bytes(self.path / METRICS)
        if data is None:
            return [], [problem] if problem else []
        chunks = data.split(b"\n")
        numbered = [(i + 1, c) for i, c in enumerate(chunks) if c.strip()]
        rows: list[EpochMetrics] = []
        for n, (lineno, chunk) in enumerate(numbered):
            try:
                row = EpochMetrics.model_validate_json(chunk)
            except ValidationError as exc:
                unterminated = lineno == len(chunks) and n == len(numbered) - 1
                if unterminated and chunk.lstrip().startswith(b"{") and _is_utf8(chunk):
                    return rows, [f"metrics.jsonl: its last line ({lineno}) is torn ({_why(exc)}); dropped"]
                after = len(numbered) - n - 1
                return rows, [f"metrics.jsonl: line {lineno} is damaged ({_why(exc)})"
                              + (f"; the {after} line(s) after it are not trusted" if after else "")]
            if row.epoch != len(rows) + 1:
                return rows, [f"metrics.jsonl: line {lineno} is epoch {row.epoch}, expected {len(rows) + 1}"]
            rows.append(row)
        return rows, []

    # -- result --------------------------------------------------------------------------------------------
    def write_result(self, result: JobResult) -> None:
        """Record the outcome; a damaged result.json is kept aside (``result.json.damaged-<n>``) first."""
        path = self.path / RESULT
        if path.exists():
            problem = self._load_result()[1]
            if problem is not None:
                self._keep_damaged(RESULT, problem)
        note = self.rerun_note()
        if note and note not in (result.error or ""):
            result = result.model_copy(update={"error": f"{result.error}\n{note}" if result.error else note})
        atomic_write_text(path, result.model_dump_json(indent=2))

    def record_failure(self, grid: str, error: str) -> JobResult:
        """Record the job as failed (its finished epochs stay; a re-run resumes) and return what is recorded,
        unless it has already finished (done or diverged, healthy): a launcher's late failure must not undo a
        final outcome, e.g. a non-host node's torchrun exiting non-zero once the host's rendezvous is gone."""
        finished = self.finished()
        if finished is not None:
            return finished
        previous = self.read_result()
        result = JobResult(job_id=self.job_id, grid=grid, status="failed",
                           epochs=previous.epochs if previous is not None else 0, error=error)
        self.write_result(result)
        return result

    def rerun_note(self) -> str | None:
        """Why this run of the job exists, when ``bioscale run --force`` started it (``RERUN``), else None."""
        data, _ = _read_bytes(self.path / RERUN)
        return data.decode(errors="replace").strip() or None if data is not None else None

    def read_result(self) -> JobResult | None:
        """The recorded outcome; None when result.json is missing or damaged (``inspect`` says why)."""
        return self._load_result()[0]

    def _load_result(self) -> tuple[JobResult | None, str | None]:
        data, problem = _read_bytes(self.path / RESULT)
        if data is None:
            return None, problem
        try:
            return JobResult.model_validate_json(data), None
        except ValidationError as exc:
            return None, f"result.json is damaged ({_why(exc)})"

    def _keep_damaged(self, name: str, problem: str) -> None:
        kept = _keep_aside(self.path / name, "damaged")
        if kept is not None:
            self.notes.append(f"{problem}; kept as {kept}")

    # -- the whole job -------------------------------------------------------------------------------------
    def inspect(self) -> JobState:
        """Everything readable about this job and, in ``problems``, what is damaged or inconsistent: an
        unreadable spec.json or result.json, damaged metrics lines, a job recorded done whose metrics do not
        cover exactly epochs 1..E. A missing file is not a problem (an empty folder is a pending job). Never
        raises."""
        from bioscale.claims import live_lease  # claims writes through this module

        state = JobState(leased=live_lease(self.path) is not None)
        state.spec, state.spec_data, problem = self._load_spec()
        if problem is not None and (self.path / SPEC).exists():  # no spec.json (yet) is not damage
            state.problems.append(problem)
        state.result, problem = self._load_result()
        state.problems += [problem] if problem else []
        state.metrics, problems = self.scan_metrics()
        state.problems += problems
        if state.result is not None and state.result.status == "done" and state.spec is not None:
            epochs = state.spec.train.epochs
            if len(state.metrics) != epochs:
                state.problems.append(f"result.json says done but metrics.jsonl holds {len(state.metrics)} of "
                                      f"its {epochs} epochs")
        return state

    def health(self) -> list[str]:
        """What is damaged or inconsistent in this job's files, in words; empty when healthy."""
        return self.inspect().problems

    def status(self) -> Status:
        """done | failed | diverged | running | pending (see ``JobState.status``: a damaged job is failed)."""
        return self.inspect().status

    def finished(self) -> JobResult | None:
        """The recorded result if the job is finished (done or diverged) and its files are healthy; None when it
        still has to run, a damaged job included (running it repairs it from its last consistent point). For
        the process that has just claimed the job, to which ``status()`` says running (its own lease)."""
        state = self.inspect()
        if state.problems or state.result is None or state.result.status not in ("done", "diverged"):
            return None
        return state.result


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class Store:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def job_dir(self, grid: str, job_id: str) -> JobDir:
        return JobDir(self.root / grid / job_id)

    def jobs(self, grid: str | None = None) -> Iterator[tuple[str, JobDir]]:
        """(grid, job folder) for every job with a spec.json (damaged ones included), in a stable order."""
        if not self.root.is_dir():
            return
        grids = [self.root / grid] if grid else sorted(p for p in _entries(self.root) if p.is_dir())
        for gdir in grids:
            if not gdir.is_dir():
                continue
            for jdir in sorted(_entries(gdir)):
                if (jdir / SPEC).exists():
                    yield gdir.name, JobDir(jdir)

    def grids(self) -> list[str]:
        return sorted({g for g, _ in self.jobs()})

    def damaged(self, grid: str | None = None) -> list[tuple[str, str, list[str]]]:
        """(grid, job id, problems) for every damaged job: for a run or a report to name them."""
        out = []
        for gname, jdir in self.jobs(grid):
            problems = jdir.health()
            if problems:
                out.append((gname, jdir.job_id, problems))
        return out


def _entries(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:  # unreadable folder: nothing to list (permissions are not damage to report here)
        return []


def load_rows(store: Store, grid: str | None = None) -> list[dict[str, Any]]:
    """One flat record per job: its resolved spec, result, consistent metrics, status and ``problems``
    (torch-free). A damaged job is listed, never skipped: ``spec`` is None where spec.json cannot be used
    (``spec_data`` then holds what parsed), ``problems`` says what is wrong and ``status`` is ``failed``."""
    rows = []
    for gname, jdir in store.jobs(grid):
        state = jdir.inspect()
        rows.append({"grid": gname, "job_id": jdir.job_id, "spec": state.spec, "spec_data": state.spec_data,
                     "status": state.status, "result": state.result, "metrics": state.metrics,
                     "problems": state.problems})
    return rows
