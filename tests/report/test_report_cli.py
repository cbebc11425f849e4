"""`bioscale report`'s options, as a user runs them: a fresh process, exit codes, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bioscale.store import Store

REPO = Path(__file__).resolve().parents[2]


def bioscale(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "bioscale", "report", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def test_report_options(fixed_store: Store, tmp_path: Path) -> None:
    results = str(fixed_store.root)
    table = bioscale("--results", results)
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 100
    assert "2.60 ± 0.14" in table.stdout and "2 done, 1 running" in table.stdout

    running = bioscale("--results", results, "--format", "markdown", "--include-running")
    assert "4.90 ± 3.98" in running.stdout and "Means include the partial epochs" in running.stdout

    columns = bioscale("--results", results, "--format", "markdown", "--columns", "+train_error,-epochs")
    header = columns.stdout.splitlines()[0]
    assert "train err %" in header and "epochs" not in header

    out = tmp_path / "table.tex"
    latex = bioscale("--results", results, "--format", "latex", "--layout", "paper", "--caption", "Our Table 1.",
                     "--label", "tab:ours", "--output", str(out))
    assert latex.returncode == 0, latex.stderr
    text = out.read_text()
    assert r"\caption{Our Table 1.}" in text and r"\label{tab:ours}" in text and r"\toprule" in text

    rows = json.loads(bioscale("--results", results, "--format", "json", "--layout", "paper").stdout)
    assert {r["method"] for r in rows} >= {"BP", "FA"} and isinstance(rows[-1]["mnist-5k FC test"], float)

    plots = bioscale("--results", results, "--plots", str(tmp_path / "plots"), "--include-running")
    assert plots.returncode == 0 and (tmp_path / "plots" / "learning_curves.png").exists()


def test_report_option_mistakes_are_one_paragraph(fixed_store: Store) -> None:
    results = str(fixed_store.root)
    unknown = bioscale("--results", results, "--columns", "rule,tst_error")
    assert unknown.returncode == 2 and "Did you mean 'test_error'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    paper = bioscale("--results", results, "--layout", "paper", "--columns", "rule")
    assert paper.returncode == 2 and "paper layout has the paper's columns" in paper.stderr
    helptext = bioscale("--help")
    assert "--include-running" in helptext.stdout and "--columns" in helptext.stdout
