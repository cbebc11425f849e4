"""``bioscale report --select best --by val_error`` (issue 15): one row per cell, chosen on validation only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from bioscale.errors import BioscaleError
from bioscale.grid import expand, load_grid
from bioscale.job import Job
from bioscale.promote import DECISIONS
from bioscale.report.select import render_selection, select_best, table5
from bioscale.report.sensitivity import sensitivity_plots
from bioscale.spec import EpochMetrics, JobResult
from bioscale.store import Store

REPO = Path(__file__).resolve().parents[2]


def _grid(tmp_path: Path, n: int = 4, seeds: int = 1, promote: dict | None = None, **base: Any) -> Path:
    data: dict[str, Any] = {
        "name": "sel",
        "base": {"dataset": {"name": "mnist-5k", "params": {"subset": 500, "validation": 200}},
                 "arch": {"name": "fc", "params": {"hidden": [16]}}, "rule": "bp",
                 "train": {"epochs": 3, "batch_size": 50, "eval_batch_size": 500, "num_workers": 0}, **base},
        "axes": {"rule.name": ["bp", "fa"], "seed": list(range(seeds))},
        "search": {"n": n, "seed": 7, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]},
                                                "optim.eps": {"choice": [1e-4, 1e-8]}}},
    }
    if promote:
        data["promote"] = promote
    path = tmp_path / "sel.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _write(store: Store, job: Job, rows: list[tuple[float, float]], status: str = "done") -> None:
    """A job whose epochs have (val_error, test_error) = rows; train error 1.0 below the test error."""
    jdir = store.job_dir(job.grid, job.job_id)
    jdir.write_spec(job.grid, job.spec)
    jdir.write_metrics([EpochMetrics(epoch=i + 1, train_loss=0.1, train_error=t - 1.0, test_error=t, val_error=v,
                                     val_loss=v / 100, epoch_time_s=0.01) for i, (v, t) in enumerate(rows)])
    jdir.write_result(JobResult(job_id=job.job_id, grid=job.grid, status=status, epochs=len(rows)))  # type: ignore[arg-type]


def _store(tmp_path: Path, seeds: int = 1) -> tuple[Store, list[Job]]:
    jobs = expand(load_grid(_grid(tmp_path, seeds=seeds)))
    return Store(tmp_path / "results"), jobs


def test_the_validation_best_wins_even_where_the_test_set_would_pick_another(tmp_path: Path) -> None:
    store, jobs = _store(tmp_path)
    bp = [j for j in jobs if j.spec.rule.name == "bp"]
    fa = [j for j in jobs if j.spec.rule.name == "fa"]
    # bp: config 2 is best on validation (6.0 at epoch 2); its test error there is 9.0, while config 0 has the
    # lowest test error anywhere (1.0) and config 2 its own lowest test error at epoch 3 (2.0)
    _write(store, bp[0], [(20.0, 1.0), (15.0, 3.0), (14.0, 4.0)])
    _write(store, bp[1], [(30.0, 2.0), (12.0, 2.5), (11.0, 2.5)])
    _write(store, bp[2], [(25.0, 12.0), (6.0, 9.0), (8.0, 2.0)])
    _write(store, bp[3], [(9.0, 50.0)], status="pending")  # unfinished: tried, not a candidate
    for i, job in enumerate(fa):
        _write(store, job, [(40.0 - i, 40.0), (35.0 - i, 38.0 + i), (36.0, 30.0)])
    sel = select_best(store, "sel")
    cells = sel.cells.set_index("rule")
    assert list(sel.cells["rule"]) == ["fa", "bp"]  # the papers' row order
    b = cells.loc["bp"]
    assert b["job_ids"] == bp[2].job_id and (b["val_error"], b["val_epoch"]) == (6.0, 2)
    assert (b["test_error"], b["train_error"]) == (9.0, 8.0)  # at the validation-selected epoch, not 2.0
    assert (b["configs"], b["finished"], b["unfinished"], b["stopped"]) == (4, 3, 1, 0)
    assert (b["val_median"], b["val_worst"]) == (10.0, 14.0)  # over every configuration tried: 14, 11, 6, 9
    assert b["optim.lr"] == f"{bp[2].spec.optim.lr:.6g}" and b["optim.lr (paper)"] == "0.000152"  # Table 5, MNIST FC BP
    assert cells.loc["fa", "job_ids"] == fa[3].job_id  # 32.0 at epoch 2, while its test error is the worst there
    assert cells.loc["fa", "paper_test_error"] == 1.85 and cells.loc["bp", "delta"] == pytest.approx(9.0 - 1.48)


def test_selection_never_reads_test_errors(tmp_path: Path) -> None:
    """Scramble every test error: the selected jobs (and every validation number) stay the same."""
    store, jobs = _store(tmp_path)
    for i, job in enumerate(jobs):
        _write(store, job, [(50.0 - 3 * i, 10.0 + i), (45.0 - (7 * i) % 11, 90.0 - i), (60.0, 70.0)])
    before = select_best(store, "sel").cells
    for i, job in enumerate(jobs):
        _write(store, job, [(50.0 - 3 * i, 99.0 - i), (45.0 - (7 * i) % 11, float(i)), (60.0, 1.0)])
    after = select_best(store, "sel").cells
    same = ["job_ids", "val_error", "val_epoch", "val_median", "val_worst", "optim.lr", "optim.eps"]
    pd.testing.assert_frame_equal(before[same], after[same])
    assert not before["test_error"].equals(after["test_error"])


def test_seeds_are_averaged_and_configurations_stopped_by_halving_are_not_candidates(tmp_path: Path) -> None:
    store, jobs = _store(tmp_path, seeds=2)
    bp = [j for j in jobs if j.spec.rule.name == "bp"]  # 4 configurations x 2 seeds: seed is an axis
    by_cfg: dict[str, list[Job]] = {}
    for job in bp:
        by_cfg.setdefault(job.label.split(" cfg=")[1], []).append(job)
    vals = {"0": (10.0, 30.0), "1": (19.0, 19.0), "2": (2.0, 2.0), "3": (25.0, 25.0)}  # config 0: mean 20
    for cfg, members in by_cfg.items():
        for job, v in zip(members, vals[cfg], strict=True):
            _write(store, job, [(v, 5.0), (v + 1, 5.0), (v + 2, 5.0)] if cfg != "2" else [(v, 5.0)],
                   "done" if cfg != "2" else "pending")
    # config 2 was not promoted at rung 1 (a decision recorded by successive halving)
    (store.root / "sel" / DECISIONS).write_text(json.dumps({"decisions": [
        {"group": "x", "label": "bp", "rung": 1, "metric": "val_error", "kept": [by_cfg["1"][0].job_id],
         "candidates": [{"job_id": j.job_id, "value": 1.0} for j in by_cfg["2"]]}]}))
    row = select_best(store, "sel").cells.set_index("rule").loc["bp"]
    assert row["job_ids"] == " ".join(j.job_id for j in by_cfg["1"]) and row["seeds"] == 2
    assert row["val_error"] == 19.0 and (row["stopped"], row["finished"]) == (1, 3)


def test_text_formats_paper_layout_and_sensitivity_plots(tmp_path: Path) -> None:
    store, jobs = _store(tmp_path)
    for i, job in enumerate(jobs):
        _write(store, job, [(30.0 - i, 20.0 + i), (40.0, 1.0), (40.0, 1.0)])
    sel = select_best(store, "sel")
    text = render_selection(sel, "markdown")
    assert "Selected on val_error" in text and "0.000152" in text and "| BP " in text
    paper = render_selection(sel, "table", "paper")
    assert "mnist-5k FC test" in paper and "(1.48," in paper
    csv = pd.read_csv(__import__("io").StringIO(render_selection(sel, "csv")))
    assert list(csv["rule"]) == ["fa", "bp"] and csv["val_error"].tolist() == [23.0, 27.0]
    paths = sensitivity_plots(sel.configs, sel.keys, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["sensitivity-optim.eps.png", "sensitivity-optim.lr.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_table5_reference_matches_table1_grid() -> None:
    """The packaged Table 5 holds the values grids/table1.yaml runs (both copied from papers.md, A.4)."""
    grid = yaml.safe_load((REPO / "grids" / "table1.yaml").read_text())
    checked = 0
    for override in grid["overrides"]:
        where, values = override["where"], override["set"]
        if where.get("rule.name") in (None, "aosdtp") or "optim.lr" not in values:
            continue
        paper = table5(where["dataset.name"], where["arch.name"], where["rule.name"],
                       where.get("rule.params.schedule", ""))
        assert paper is not None
        assert {k: v for k, v in values.items() if k in paper} == paper
        checked += 1
    assert checked == 30
    assert table5("imagenet", "lc", "dtp", "alternating")["rule.params.alpha"] == 0.03706


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bioscale", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


def test_end_to_end_search_on_mnist5k_through_the_cli(tmp_path: Path) -> None:
    """A few configurations, tiny budgets, successive halving: `bioscale run`, then the selection report."""
    grid = _grid(tmp_path, n=3, promote={"metric": "val_error", "rungs": [1], "keep": 1}, train={
        "epochs": 2, "batch_size": 50, "eval_batch_size": 500, "num_workers": 0, "device": "cpu"})
    results = tmp_path / "results"
    run = _cli("run", str(grid), "--results", str(results), "-q")
    assert run.returncode == 0, run.stderr
    assert "6 jobs, 0 already finished or stopped at a rung, 6 to run" in run.stderr
    assert "2 done, 4 paused at a rung" in run.stderr
    report = _cli("report", "--results", str(results), "--select", "best", "--by", "val_error", "--format", "json")
    assert report.returncode == 0, report.stderr
    cells = json.loads(report.stdout)
    assert [c["rule"] for c in cells] == ["fa", "bp"] and all(c["configs"] == 3 and c["stopped"] == 2 for c in cells)
    store = Store(results)
    for cell in cells:  # the selected job is the one promoted: the lowest val_error at the rung
        decision = next(d for d in json.loads((results / "sel" / DECISIONS).read_text())["decisions"]
                        if d["label"].startswith(cell["rule"]))
        assert cell["job_ids"] == decision["kept"][0]
        metrics = store.job_dir("sel", cell["job_ids"]).read_metrics()
        best = min(metrics, key=lambda m: m.val_error)
        assert (cell["val_error"], cell["test_error"]) == (best.val_error, best.test_error)
    paper = _cli("report", "--results", str(results), "--select", "best", "--layout", "paper", "--plots",
                 str(tmp_path / "plots"))
    assert paper.returncode == 0 and "mnist-5k FC test" in paper.stdout and "Table 5" in paper.stdout
    assert (tmp_path / "plots" / "sensitivity-optim.lr.png").is_file()
    refused = _cli("report", "--results", str(results), "--select", "best", "--by", "test_error")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr and "val_error" in refused.stderr


def test_a_store_without_validation_metrics_is_refused_with_what_to_do(fixed_store: Store) -> None:
    with pytest.raises(BioscaleError, match=r"no validation set. Give the grid dataset.params.validation"):
        select_best(fixed_store)
