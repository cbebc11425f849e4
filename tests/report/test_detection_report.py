"""The report and plots with detection jobs: COCO AP columns, the best epoch as the highest AP, "not tabulated"
for Xiao et al.'s COCO experiment, and figures that draw AP instead of errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bioscale.grid import resolve
from bioscale.report.frame import load_curves, load_frame
from bioscale.report.plots import write_plots
from bioscale.report.render import aggregate, paper_text
from bioscale.spec import EpochMetrics, JobResult
from bioscale.store import Store

GRID = "det-mini"
# (dataset, rule, seed, AP per epoch: None where not evaluated)
JOBS = [
    ("coco", "bp", 0, [None, 10.0, None, 14.0]),
    ("coco", "bp", 1, [None, 12.0, None, 11.0]),  # best AP at epoch 2, not the last
    ("coco", "ss", 0, [None, 5.0, None, 7.0]),
    ("mnist-boxes", "fa", 0, [None, 30.0, None, 40.0]),
]


def _ap(ap: float) -> dict[str, float]:
    return {"ap": ap, "ap50": 2 * ap, "ap75": ap / 2, "ap_small": ap / 3}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "results")
    for dataset, rule, seed, aps in JOBS:
        spec = resolve({"dataset": dataset, "arch": "retinanet", "rule": rule, "seed": seed,
                        "train": {"epochs": len(aps), "eval_every": 2}})
        jdir = store.job_dir(GRID, spec.job_id())
        jdir.write_spec(GRID, spec)
        jdir.write_metrics([EpochMetrics(epoch=i + 1, train_loss=2.0 - i / 10, epoch_time_s=3.0,
                                         metrics=_ap(ap) if ap is not None else {}) for i, ap in enumerate(aps)])
        jdir.write_result(JobResult(job_id=spec.job_id(), grid=GRID, status="done", epochs=len(aps)))
    return store


def test_frame_has_the_best_ap_of_each_job(store: Store) -> None:
    frame = load_frame(store).set_index(["dataset", "rule", "seed"])
    assert frame.loc[("coco", "bp", 0), ["ap", "ap50", "ap75", "best_epoch"]].tolist() == [14.0, 28.0, 7.0, 4]
    assert frame.loc[("coco", "bp", 1), ["ap", "best_epoch"]].tolist() == [12.0, 2]
    assert frame["test_error"].isna().all() and frame["paper_note"].loc[("coco", "bp", 0)] == "not tabulated"


def test_settings_table_shows_ap_columns(store: Store) -> None:
    table = aggregate(load_frame(store))
    assert {"ap", "ap50", "ap75"} <= set(table.columns) and "test_error" not in table.columns
    bp = table[(table["rule"] == "bp") & (table["dataset"] == "coco")].iloc[0]
    assert bp["ap"].startswith("13.00 ± 1.41")  # mean of 14 and 12, sample std
    assert table[table["rule"] == "ss"].iloc[0]["paper_test_error"] == "not tabulated"


def test_paper_layout_says_not_tabulated_for_xiaos_coco(store: Store) -> None:
    table = paper_text(load_frame(store), include_running=False)
    text = "\n".join(" | ".join(row) for row in [table.headers, *table.rows])
    assert "coco RetinaNet AP" in text and "coco RetinaNet AP50" in text
    assert "(not tabulated)" in text
    assert "mnist-boxes RetinaNet AP" in text and "40.00" in text


def test_plots_tolerate_detection_jobs(store: Store, tmp_path: Path) -> None:
    curves = load_curves(store)
    assert curves["ap"].notna().sum() == 8
    written = write_plots(load_frame(store), curves, tmp_path / "plots")
    assert [p.name for p in written] == ["learning_curves.png"]
    assert all(p.stat().st_size > 10_000 for p in written)
