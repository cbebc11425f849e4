from pathlib import Path

import matplotlib.image as mpimg

from bioscale.report.frame import load_curves, load_frame
from bioscale.report.plots import write_plots
from bioscale.store import Store


def test_plots_are_written_non_empty_and_sized(fixed_store: Store, tmp_path: Path) -> None:
    paths = write_plots(load_frame(fixed_store), load_curves(fixed_store), tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == ["angle_grad_bp.png", "angle_w_b.png", "learning_curves.png", "test_error_vs_paper.png"]
    for path in paths:
        image = mpimg.imread(path)
        height, width = image.shape[:2]
        assert 300 <= height <= 2000 and 400 <= width <= 2000, (path.name, image.shape)
        assert image.std() > 0.01  # not a blank canvas


def test_curves_carry_the_diagnostics(fixed_store: Store) -> None:
    curves = load_curves(fixed_store)
    fa = curves[curves["rule"] == "fa"]
    assert list(fa["angle_grad_bp/layers.0.op"]) == [80.0, 70.0]
    assert len(curves) == 3 + 3 + 2 + 1  # epochs of the jobs with metrics


def test_no_metrics_no_figures(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty")
    assert write_plots(load_frame(store), load_curves(store), tmp_path / "plots") == []
