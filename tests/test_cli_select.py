"""The daily-use flags end to end, as a user runs them: --where/--only on run, report, status and grid expand;
run --force; the default results folder; compare; shell completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from bioscale.spec import JobResult
from bioscale.store import Store

REPO = Path(__file__).resolve().parent.parent


def bioscale(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    full = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": path, **(env or {})}
    return subprocess.run([sys.executable, "-m", "bioscale", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=300)


def test_a_subset_runs_reruns_with_force_and_reports(tmp_path: Path, tiny_grid: dict) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid))
    results = tmp_path / "results"
    run = ["run", str(grid), "--results", str(results), "--set", "train.epochs=1", "-q"]

    expand = bioscale("grid", "expand", str(grid), "--where", "rule.name=fa", "--only", "s1")
    assert expand.returncode == 0 and len(expand.stdout.splitlines()) == 1 and "fa fc synthetic s1" in expand.stdout

    first = bioscale(*run, "--where", "rule.name=bp")
    assert first.returncode == 0, first.stderr
    assert "tiny: 2 jobs selected, 0 already finished, 2 to run" in first.stderr and "finished: 2 done" in first.stderr
    idle = bioscale(*run, "--where", "rule.name=bp")
    assert idle.returncode == 0
    assert (f"nothing to run: 2 job(s) already finished in {results / 'tiny'}; `--force` to rerun them, "
            "`--results DIR` for a fresh store.") in idle.stderr

    rows = json.loads(bioscale("status", "--results", str(results), "--where", "seed=0", "--format", "json").stdout)
    assert [(r["job"], r["status"]) for r in rows] == [("bp fc synthetic s0", "done")]
    one = rows[0]["job_id"]
    forced = bioscale(*run, "--only", one[:6], "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force: rerunning the 1 finished job(s) of the selection from scratch" in forced.stderr
    assert "1 jobs selected, 0 already finished, 1 to run" in forced.stderr
    jdir = Store(results).job_dir("tiny", one)
    assert (jdir.path / "result.json.aside-1").exists() and "bioscale run --force" in jdir.read_result().error

    whole = bioscale(*run, "--force")  # no selection: allowed, and it says it is the whole grid
    assert whole.returncode == 0, whole.stderr
    assert "--force: rerunning ALL 2 finished jobs of grid tiny (no --where/--only: the whole grid)" in whole.stderr
    assert "finished: 4 done" in whole.stderr
    assert (jdir.path / "result.json.aside-2").exists()

    report = json.loads(bioscale("report", "--results", str(results), "--where", "rule.name=fa", "--format",
                                 "json").stdout)
    assert len(report) == 2 and {r["rule"] for r in report} == {"fa"}
    same = json.loads(bioscale("compare", str(results), str(results), "--only", "bp", "--format", "json").stdout)
    assert [(r["rule"], r["present"], r["test_error_delta"]) for r in same] == [("bp", "both", 0.0)]


def test_selection_mistakes_are_one_paragraph_and_exit_2(tmp_path: Path, tiny_grid: dict) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid))
    results = tmp_path / "results"
    cases = [
        (["run", str(grid), "--results", str(results), "--where", "rule.nme=bp"],
         "unknown key 'rule.nme'. Did you mean 'rule.name'? Allowed after 'rule.': name, params."),
        (["run", str(grid), "--results", str(results), "--where", "rule.name=dtp"],
         "--where rule.name=dtp selects none of the 4 jobs of grid tiny. rule.name is bp, fa there."),
        (["status", str(grid), "--results", str(results), "--only", "nope"], "--only 'nope' matches no job id"),
    ]
    for args, message in cases:
        proc = bioscale(*args)
        assert proc.returncode == 2, proc.stderr
        assert message in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not results.exists()  # nothing was run or written


def _shipped(root: Path, grid: str) -> None:
    """A results folder like the repository's results/: one finished job of ``grid``."""
    from bioscale.grid import resolve

    spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": "bp"})
    jdir = Store(root).job_dir(grid, spec.job_id())
    jdir.write_spec(grid, spec)
    jdir.write_result(JobResult(job_id=spec.job_id(), grid=grid, status="done"))


def test_the_default_results_folder_is_runs_and_the_shipped_one_is_named(tmp_path: Path, tiny_grid: dict) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_grid))
    _shipped(tmp_path / "results", "tiny")
    nothing = bioscale("report", cwd=tmp_path)
    assert nothing.returncode == 2
    assert ("No results in runs/, where `bioscale run` writes by default. The results shipped with bioscale "
            "(tiny) are in results/: `--results results`.") in " ".join(nothing.stderr.split())
    run = bioscale("run", "tiny.yaml", "--set", "train.epochs=1", "-q", "--where", "seed=0", "--where", "rule=bp",
                   cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "-> runs/tiny" in run.stderr and "bioscale ships results of grid tiny in results/tiny" in run.stderr
    assert len(list(Store(tmp_path / "runs").jobs())) == 1 and len(list(Store(tmp_path / "results").jobs())) == 1
    report = bioscale("report", "--format", "csv", cwd=tmp_path)
    assert report.returncode == 0 and len(report.stdout.splitlines()) == 2
    status = bioscale("status", cwd=tmp_path)
    assert status.returncode == 0 and "1 jobs: 1 done" in status.stderr


def test_shell_completion_scripts_name_bioscale() -> None:
    """typer's completion is on: --show-completion SHELL (SHELL given: detection off, as in a test) prints
    the script to source; the script calls bioscale back with _BIOSCALE_COMPLETE set."""
    given = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    expected = {"bash": "complete -o default -F _bioscale_completion bioscale", "zsh": "#compdef bioscale",
                "fish": "complete --command bioscale"}
    for shell, line in expected.items():
        proc = bioscale("--show-completion", shell, env=given)
        assert proc.returncode == 0 and line in proc.stdout, (shell, proc.stdout, proc.stderr)
    words = bioscale(env={"_BIOSCALE_COMPLETE": "complete_bash", "COMP_WORDS": "bioscale comp", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["compare"]
    options = bioscale(env={"_BIOSCALE_COMPLETE": "complete_bash", "COMP_WORDS": "bioscale run g.yaml --fo",
                            "COMP_CWORD": "3"})
    assert options.stdout.split() == ["--force"]
