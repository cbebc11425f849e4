"""bioscale compare: settings matched across two stores, seeds as mean ± std, B - A; golden outputs."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bioscale.grid import resolve
from bioscale.report.compare import Side, compare, render_comparison
from bioscale.spec import EpochMetrics, JobResult
from bioscale.store import Store, load_rows

GOLDEN = Path(__file__).parent / "golden"
# (rule, rule params, seed, best test error, final train error, epochs run)
A_JOBS: list[tuple[str, dict[str, Any], int, float, float, int]] = [
    ("bp", {}, 0, 2.5, 0.5, 2), ("bp", {}, 1, 2.7, 0.2, 2),
    ("fa", {"last_layer_bp": False}, 0, 4.0, 3.0, 2), ("fa", {"last_layer_bp": False}, 1, 4.4, 3.2, 2),
    ("fa", {"last_layer_bp": True}, 0, 2.0, 1.0, 2),  # only in A
]
B_JOBS: list[tuple[str, dict[str, Any], int, float, float, int]] = [
    ("bp", {}, 0, 2.0, 0.4, 2), ("bp", {}, 1, 2.2, 0.3, 2),
    ("fa", {"last_layer_bp": False}, 0, 3.9, 2.5, 2), ("fa", {"last_layer_bp": False}, 1, 5.0, 2.9, 1),
    ("dfa", {}, 0, 3.0, 2.0, 2),  # only in B
]


def _store(root: Path, grid: str, jobs: list[tuple[str, dict[str, Any], int, float, float, int]],
           lr: float) -> Store:
    store = Store(root)
    for rule, params, seed, test, train, ran in jobs:
        spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": {"name": rule, "params": params},
                        "seed": seed, "train": {"epochs": 2}, "optim": {"name": "adam", "lr": lr}})
        jdir = store.job_dir(grid, spec.job_id())
        jdir.write_spec(grid, spec)
        jdir.write_metrics([EpochMetrics(epoch=i + 1, train_loss=1.0, train_error=train + 1 - i,
                                         test_error=test + 1 - i, epoch_time_s=1.0, lr=lr) for i in range(ran)])
        status = "done" if ran == 2 else "pending"  # an interrupted job: left out of the means
        jdir.write_result(JobResult(job_id=spec.job_id(), grid=grid, status=status, epochs=ran))
    return store


@pytest.fixture
def sides(tmp_path: Path) -> tuple[Side, Side]:
    a = _store(tmp_path / "a", "table1-mini", A_JOBS, 1e-4)
    b = _store(tmp_path / "b", "table1-mini-v2", B_JOBS, 1e-3)
    return (Side("A", "a (grid table1-mini)", load_rows(a, "table1-mini")),
            Side("B", "b (grid table1-mini-v2)", load_rows(b, "table1-mini-v2")))


def test_settings_are_matched_and_b_minus_a_is_of_the_means(sides: tuple[Side, Side]) -> None:
    c = compare(*sides)
    rows = {(r.rule, r.setting): r for r in c.numbers.itertuples(index=False)}
    bp = rows[("bp", "")]
    assert bp.present == "both" and bp.seeds_a == 2 and bp.seeds_b == 2
    assert bp.test_error_a == 2.6 and bp.test_error_b == 2.1 and bp.test_error_delta == -0.5  # no float noise
    assert bp.test_error_a_std == pytest.approx(0.1414213562) and bp.train_error_delta == 0.0
    fa = rows[("fa", "rule.params.last_layer_bp=false")]
    # B's seed 1 stopped after 1 of 2 epochs: out of the mean (and its epochs), named in the status
    assert fa.seeds_b == 1 and fa.test_error_b == 3.9 and fa.status_b == "1 done, 1 pending"
    assert fa.epochs_min_b == fa.epochs_b == 2
    assert rows[("fa", "rule.params.last_layer_bp=true")].present == "A only"
    dfa = rows[("dfa", "rule.params.last_layer_bp=false")]  # the key varies in A (fa), so every row names it
    assert dfa.present == "B only" and dfa.test_error_a is None
    assert any("A and B differ in optim.lr (A 0.0001, B 0.001)" in n for n in c.notes)
    # --include-running: (3.9 + 6.0) / 2, the partial job's one epoch in
    included = {(r.rule, r.setting): r for r in compare(*sides, include_running=True).numbers.itertuples()}
    assert included[("fa", "rule.params.last_layer_bp=false")].test_error_b == pytest.approx(4.95)


def test_machine_formats_carry_numbers(sides: tuple[Side, Side]) -> None:
    c = compare(*sides)
    data = json.loads(render_comparison(c, "json"))
    assert data[0]["rule"] == "fa" and isinstance(data[0]["test_error_a"], float)
    assert all(isinstance(r["seeds_a"], int) or r["seeds_a"] is None for r in data)
    csv = pd.read_csv(io.StringIO(render_comparison(c, "csv")))
    assert csv["test_error_delta"].dtype == float and list(csv["present"]) == [
        "both", "A only", "B only", "both"]


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_every_format_matches_its_golden_file(sides: tuple[Side, Side], fmt: str) -> None:
    text = render_comparison(compare(*sides), fmt)
    golden = GOLDEN / f"compare.{fmt}.txt"
    if os.environ.get("BIOSCALE_UPDATE_GOLDEN"):  # regenerate on purpose, then review the diff
        golden.write_text(text)
    assert text == golden.read_text()


def test_a_table_fits_100_columns(sides: tuple[Side, Side]) -> None:
    text = render_comparison(compare(*sides), "table", width=200)
    assert max(len(line) for line in text.splitlines()) <= 100
