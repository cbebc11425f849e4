"""``bioscale report --select best --plots DIR``: per searched hyperparameter, one figure with a panel per cell
(rule x arch x dataset) and one point per configuration tried: its test error (at its best validation epoch,
mean over seeds) against the value drawn. A reader sees how sensitive each rule is to each hyperparameter and
where the selected configuration (a red ring) lies. Configurations stopped by successive halving are hollow
(their error is from their last rung)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from bioscale.report.names import column_of, method_of

DPI = 110


def sensitivity_plots(configs: pd.DataFrame, keys: list[str], out_dir: Path) -> list[Path]:
    """``sensitivity-<key>.png`` for every searched key; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in keys:
        if configs.empty or key not in configs.columns:
            continue
        data = configs[configs[key].notna() & configs["test_error"].notna()]
        if data.empty:
            continue
        paths.append(_figure(data, key, out_dir / f"sensitivity-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.png"))
    return paths


def _figure(data: pd.DataFrame, key: str, path: Path) -> Path:
    cells = list(dict.fromkeys(zip(data.grid, data.dataset, data.arch, data.rule, data.schedule, strict=True)))
    cols = min(4, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, sharey=True)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data[key])
    categories = sorted({_label(v) for v in data[key]}) if not numeric else []
    for ax, cell in zip(axes.flat, cells, strict=False):
        grid, dataset, arch, rule, schedule = cell
        sub = data[(data.grid == grid) & (data.dataset == dataset) & (data.arch == arch) & (data.rule == rule)
                   & (data.schedule == schedule)]
        x = [float(v) for v in sub[key]] if numeric else [categories.index(_label(v)) for v in sub[key]]
        stopped = sub["stopped"].to_numpy(dtype=bool)
        xs = pd.Series(x)
        ax.scatter(xs[~stopped], sub["test_error"][~stopped], s=22, color="tab:blue", label="ran whole budget")
        ax.scatter(xs[stopped], sub["test_error"][stopped], s=22, facecolors="none", edgecolors="tab:blue",
                   label="stopped at a rung")
        chosen = sub["selected"].to_numpy(dtype=bool)
        ax.scatter(xs[chosen], sub["test_error"][chosen], s=90, facecolors="none", edgecolors="tab:red",
                   linewidths=1.6, label="selected (on validation)")
        if numeric and min(x) > 0 and max(x) / min(x) > 4:  # a log-uniform range reads on a log axis
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=30, fontsize=7)
        ax.set_title(f"{method_of(rule, schedule, arch)}\n{dataset} {column_of(arch)}", fontsize=9)
        ax.set_xlabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(cells):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test error %")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"Test error of each configuration against {key}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _label(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
