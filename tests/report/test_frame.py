import math

from bioscale.report import JOB_COLUMNS, load_frame
from bioscale.store import Store


def test_one_row_per_job_with_the_interface_columns(fixed_store: Store) -> None:
    frame = load_frame(fixed_store)
    assert list(frame.columns) == JOB_COLUMNS
    assert len(frame) == 6
    required = {"grid", "job_id", "rule", "schedule", "arch", "dataset", "seed", "status", "epochs",
                "train_error", "test_error", "top5_error", "epoch_time_s", "wall_time_s", "paper_test_error",
                "delta"}
    assert required <= set(frame.columns)


def test_best_errors_and_paper_join(fixed_store: Store) -> None:
    frame = load_frame(fixed_store).set_index(["rule", "seed"])
    bp0 = frame.loc[("bp", 0)]
    assert (bp0.train_error, bp0.test_error, bp0.final_test_error, bp0.best_epoch) == (0.5, 2.5, 3.0, 2)
    assert bp0.epoch_time_s == 2.0  # median of 1, 2, 3
    # mnist-5k is compared with the paper's MNIST, Table 1(a), FC column, BP row: 1.48 test error
    assert bp0.paper_test_error == 1.48 and bp0.paper_train_error == 0.0 and bp0.paper_dataset == "mnist"
    assert math.isclose(bp0.delta, 2.5 - 1.48)
    assert "Table 1(a)" in bp0.paper_source
    dtp = frame.loc[("dtp", 0)]
    assert dtp.schedule == "alternating" and dtp.paper_test_error == 1.83 and dtp.status == "diverged"
    assert frame.loc[("dfa", 0)].status == "pending" and frame.loc[("fa", 0)].schedule == ""
    assert frame.loc[("sdtp", 0)].error == "DataError: mnist-5k is missing"
