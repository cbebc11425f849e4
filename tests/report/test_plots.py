import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from bioscale.grid import resolve
from bioscale.report.frame import in_means, load_curves, load_frame
from bioscale.report.layers import layer_names
from bioscale.report.plots import angle_figure, angle_panels, final_errors_figure, learning_figure, write_plots
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


def test_curves_carry_the_diagnostics_and_the_layer_names(fixed_store: Store) -> None:
    curves = load_curves(fixed_store)
    fa = curves[curves["rule"] == "fa"]
    assert sorted(set(fa["angle_grad_bp/layers.0.op"])) == [70.0, 80.0]  # 80 - 10 * (epoch - 1)
    assert len(curves) == 3 + 3 + 1 + 2 + 2 + 2 + 1  # epochs of the jobs with metrics
    assert fa["layer_names"].iloc[0]["layers.5.op"] == "output"


@pytest.mark.parametrize(("arch", "dataset", "names"), [
    ("fc", "mnist-5k", ["hidden 1", "hidden 2", "hidden 3", "hidden 4", "hidden 5", "output"]),
    ({"name": "fc", "params": {"hidden": [100, 50]}}, "digits", ["hidden 1", "hidden 2", "output"]),
    ("lc", "mnist", ["LC 1", "LC 2", "hidden 1", "output"]),
    ("lc", "cifar10", ["LC 1", "LC 2", "LC 3", "hidden 1", "output"]),
    ("conv", "mnist", ["conv 1", "conv 2", "hidden 1", "output"]),
    ("lc", "imagenet", [f"LC {i}" for i in range(1, 8)] + ["output"]),
    ({"name": "lc", "params": {"layers": [[3, 8, 1]], "hidden": []}}, "mnist", ["LC 1", "output"]),
])
def test_layer_names_follow_the_paper(arch: object, dataset: str, names: list[str]) -> None:
    spec = resolve({"dataset": dataset, "arch": arch, "rule": "fa"})
    assert layer_names(spec) == {f"layers.{i}.op": n for i, n in enumerate(names)}


def test_other_nets_keep_their_module_paths_and_nothing_imports_torch() -> None:
    assert layer_names(resolve({"dataset": "imagenet", "arch": "resnet18", "rule": "fa"})) == {}
    assert layer_names(None) == {}
    code = ("import sys, bioscale.report.plots, bioscale.report.layers, bioscale.report.render; "
            "assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _finished(fixed_store: Store, include_running: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_frame(fixed_store)
    frame = frame[in_means(frame, include_running)]
    curves = load_curves(fixed_store).merge(frame[["grid", "job_id", "setting"]], on=["grid", "job_id"])
    return frame, curves


def test_angle_plots_name_layers_as_the_paper_with_one_y_range(fixed_store: Store) -> None:
    _, curves = _finished(fixed_store)
    panels = dict(angle_panels(curves, "angle_w_b"))
    hidden = ["hidden 1", "hidden 2", "hidden 3", "hidden 4", "hidden 5"]
    assert list(panels) == ["FA · last_layer_bp=false (mnist-5k, FC)", "FA · last_layer_bp=true (mnist-5k, FC)"]
    assert list(panels["FA · last_layer_bp=false (mnist-5k, FC)"].columns) == [*hidden, "output"]
    assert list(panels["FA · last_layer_bp=true (mnist-5k, FC)"].columns) == hidden  # the output keeps BP
    fig = angle_figure(curves, "angle_grad_bp", "angle")
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(axes) == 3 and len({ax.get_ylim() for ax in axes}) == 1  # DTP and both FA settings
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [*hidden, "output"] and not any("layers." in t for t in labels)
    plt.close(fig)


def test_learning_curves_have_seed_bands_and_one_line_per_setting(fixed_store: Store) -> None:
    _, curves = _finished(fixed_store)
    fig = learning_figure(curves)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["DTP, alternating", "FA · last_layer_bp=false", "FA · last_layer_bp=true", "BP"]
    ax = fig.axes[0]
    assert len(ax.collections) == 2  # a band for each line over two seeds: FA (false) and BP
    bp = [line for line in ax.get_lines() if line.get_linestyle() == "-"][-1]
    assert list(bp.get_ydata()) == pytest.approx([5.5, 2.6, 2.95])  # the running seed 2 (9.5) is left out
    plt.close(fig)
    _, curves = _finished(fixed_store, include_running=True)
    fig = learning_figure(curves)
    bp = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "-"][-1]
    assert bp.get_ydata()[0] == pytest.approx((6.0 + 5.0 + 9.5) / 3)
    plt.close(fig)


def test_the_comparison_says_what_each_side_trained_on(fixed_store: Store) -> None:
    frame, _ = _finished(fixed_store)
    fig = final_errors_figure(frame)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["ours: mnist-5k, 2-3 epochs (mean ± std over seeds)", "paper: full MNIST, 500 epochs"]
    ticks = [t.get_text().replace("\n", " ") for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["DTP, alternating", "FA · last_layer_bp=false", "FA · last_layer_bp=true", "BP"]
    plt.close(fig)


def test_no_metrics_no_figures(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty")
    assert write_plots(load_frame(store), load_curves(store), tmp_path / "plots") == []
