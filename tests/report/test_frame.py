import math
from pathlib import Path

from bioscale.grid import resolve
from bioscale.report import JOB_COLUMNS, load_frame
from bioscale.report.frame import in_means
from bioscale.spec import EpochMetrics
from bioscale.store import Store


def test_one_row_per_job_with_the_interface_columns(fixed_store: Store, fixed_jobs: list) -> None:
    frame = load_frame(fixed_store)
    assert list(frame.columns) == JOB_COLUMNS
    assert len(frame) == len(fixed_jobs)
    required = ["grid", "job_id", "rule", "schedule", "arch", "dataset", "seed", "status", "epochs",
                "train_error", "test_error", "top5_error", "epoch_time_s", "wall_time_s", "paper_test_error",
                "delta"]
    assert JOB_COLUMNS[:len(required) + 4] == [  # design.md's columns keep their place; new ones go at the end
        "grid", "job_id", "rule", "schedule", "arch", "dataset", "seed", "status", "epochs", "train_error",
        "test_error", "top5_error", "final_test_error", "best_epoch", "epoch_time_s", "wall_time_s",
        "paper_train_error", "paper_test_error", "paper_top5_error", "delta"]
    assert set(required) <= set(frame.columns)


def test_best_errors_and_paper_join(fixed_store: Store) -> None:
    frame = load_frame(fixed_store)
    frame = frame[frame["setting"] != "rule.params.last_layer_bp=true"].set_index(["rule", "seed"])
    bp0 = frame.loc[("bp", 0)]
    assert (bp0.train_error, bp0.test_error, bp0.final_test_error, bp0.best_epoch) == (0.5, 2.5, 3.0, 2)
    assert bp0.epoch_time_s == 2.0  # median of 1, 2, 3
    # mnist-5k is compared with the paper's MNIST, Table 1(a), FC column, BP row: 1.48 test error
    assert bp0.paper_test_error == 1.48 and bp0.paper_train_error == 0.0 and bp0.paper_dataset == "mnist"
    assert math.isclose(bp0.delta, 2.5 - 1.48)
    assert "Table 1(a)" in bp0.paper_source and bp0.paper_setup == "full MNIST, 500 epochs"
    dtp = frame.loc[("dtp", 0)]
    assert dtp.schedule == "alternating" and dtp.paper_test_error == 1.83 and dtp.status == "diverged"
    assert frame.loc[("dfa", 0)].status == "pending" and frame.loc[("fa", 0)].schedule == ""
    assert frame.loc[("sdtp", 0)].error == "DataError: mnist-5k is missing"
    running = frame.loc[("bp", 2)]
    assert (running.status, running.epochs, running.planned_epochs) == ("running", 1, 3)


def test_setting_names_what_varies_within_a_cell_as_a_grid_writes_it(fixed_store: Store) -> None:
    frame = load_frame(fixed_store)
    fa = frame[frame["rule"] == "fa"]
    assert sorted(set(fa["setting"])) == ["rule.params.last_layer_bp=false", "rule.params.last_layer_bp=true"]
    assert set(frame.loc[frame["rule"] == "bp", "setting"]) == {""}  # bp has no last_layer_bp to show


def test_finished_jobs_only_go_into_means_unless_asked(fixed_store: Store) -> None:
    frame = load_frame(fixed_store)
    status = dict(zip(frame["status"], in_means(frame), strict=False))
    assert status == {"done": True, "diverged": True, "running": False, "pending": False, "failed": False}
    with_running = dict(zip(frame["status"], in_means(frame, include_running=True), strict=False))
    assert with_running["running"] and with_running["pending"] and not with_running["failed"]


def test_numbers_carry_no_float_noise(tmp_path: Path) -> None:
    """9.3 - 2.86 is 6.440000000000001 in floats; the report says 6.44 (the issue's example)."""
    store = Store(tmp_path)
    spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": {"name": "dtp", "params": {"schedule": "parallel"}},
                    "train": {"epochs": 1}})
    jdir = store.job_dir("g", spec.job_id())
    jdir.write_spec("g", spec)
    jdir.write_metrics([EpochMetrics(epoch=1, train_loss=1.0, train_error=0.1 + 0.2, test_error=9.3,
                                     epoch_time_s=1.0, lr=1e-3)])
    row = load_frame(store).iloc[0]
    assert 9.3 - 2.86 != 6.44 and row.delta == 6.44 and row.train_error == 0.3
    assert row.planned_epochs == 1 and row.best_epoch == 1


def test_stack_column_says_how_many_jobs_trained_together(fixed_store: Store) -> None:
    """1 for a job that trained alone; a stacked job's size comes from ``provenance.stack`` (its epoch and wall
    times are the stack's); a job without a result has none."""
    from bioscale.provenance import collect

    frame = load_frame(fixed_store)
    recorded = frame[frame["wall_time_s"].notna()]
    assert set(recorded["stack"]) == {1}
    grid, job_id = recorded.iloc[0][["grid", "job_id"]]
    jdir = fixed_store.job_dir(grid, job_id)
    result = jdir.read_result()
    assert result is not None
    stacked = collect().model_copy(update={"stack": [job_id, "x", "y"]})
    jdir.write_result(result.model_copy(update={"provenance": stacked}))
    again = load_frame(fixed_store).set_index("job_id")
    assert again.loc[job_id, "stack"] == 3
