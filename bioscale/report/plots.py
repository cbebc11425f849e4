"""``bioscale report --plots DIR``: learning curves, final test error against the paper's, and the
alignment-angle curves from the rules' diagnostics, as PNG files."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from bioscale.report.names import column_of, column_rank, method_of, method_rank

DPI = 110


def write_plots(frame: pd.DataFrame, curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Every figure the data allows; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if not curves.empty:
        written.append(learning_curves(curves, out_dir / "learning_curves.png"))
        for metric, title in (("angle_grad_bp", "angle between the rule's weight update and backprop's"),
                              ("angle_w_b", "angle between forward weights W and feedback weights B")):
            if any(c.startswith(metric + "/") for c in curves.columns):
                written.append(angle_curves(curves, metric, title, out_dir / f"{metric}.png"))
    if not frame.empty and frame["test_error"].notna().any():
        written.append(final_errors(frame, out_dir / "test_error_vs_paper.png"))
    return written


def _panels(keys: list[tuple[str, str]]) -> tuple[plt.Figure, list[plt.Axes]]:
    n = len(keys)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _with_panels(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `panel` ("dataset, COLUMN") and `method` columns, sorted: datasets and columns in registration
    order, methods in the paper's row order (`_m`, kept for the colours)."""
    keys = list(zip(frame.rule, frame.schedule, frame.arch, strict=True))
    frame = frame.assign(
        panel=[f"{d}, {column_of(a)}" for d, a in zip(frame.dataset, frame.arch, strict=True)],
        method=[method_of(*k) for k in keys], _m=[method_rank(*k) for k in keys],
        _p=[column_rank(d, a) for d, a in zip(frame.dataset, frame.arch, strict=True)])
    return frame.sort_values(["_p", "_m"], kind="stable")


def _colors(frame: pd.DataFrame) -> dict[str, str]:
    """The same colour for a method in every panel, assigned in the papers' row order."""
    ranks = dict(zip(frame["method"], frame["_m"], strict=True))
    return {m: f"C{i % 10}" for i, m in enumerate(sorted(ranks, key=ranks.__getitem__))}


def _shared_legend(fig: plt.Figure, colors: dict[str, str], title: str) -> None:
    handles = [plt.Line2D([], [], color=c, label=m) for m, c in colors.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title=title,
               title_fontsize=8, frameon=False)


def learning_curves(curves: pd.DataFrame, path: Path) -> Path:
    """One panel per dataset x arch; one colour per method; test error solid, train error dashed."""
    curves = _with_panels(curves)
    keys = list(dict.fromkeys(curves["panel"]))
    colors = _colors(curves)
    fig, axes = _panels(keys)
    for ax, panel in zip(axes, keys, strict=True):
        data = curves[curves["panel"] == panel]
        for method, group in data.groupby("method", sort=False):
            mean = group.groupby("epoch")[["train_error", "test_error"]].mean()
            ax.plot(mean.index, mean["test_error"], color=colors[method])
            ax.plot(mean.index, mean["train_error"], color=colors[method], linestyle="--", alpha=0.7)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
    _shared_legend(fig, colors, "solid: test\ndashed: train")
    fig.suptitle("Learning curves (mean over seeds)")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def final_errors(frame: pd.DataFrame, path: Path) -> Path:
    """Best test error per method (mean ± std over seeds) next to the paper's, one panel per dataset x arch."""
    frame = _with_panels(frame)
    keys = list(dict.fromkeys(frame["panel"]))
    fig, axes = _panels(keys)
    for ax, panel in zip(axes, keys, strict=True):
        data = frame[frame["panel"] == panel]
        stats = data.groupby("method", sort=False).agg(ours=("test_error", "mean"), std=("test_error", "std"),
                                                        paper=("paper_test_error", "first"))
        x = range(len(stats))
        has_std = stats["std"].notna().any()  # one seed: no error bar rather than a zero-width one
        ax.bar([i - 0.2 for i in x], stats["ours"], width=0.4, yerr=stats["std"] if has_std else None,
               capsize=3, label="ours (mean ± std over seeds)" if has_std else "ours", color="C0")
        ax.bar([i + 0.2 for i in x], stats["paper"], width=0.4, label="paper", color="C1")
        ax.set_xticks(list(x))
        ax.set_xticklabels(stats.index, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("best test error (%)")
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Best test error: ours vs the paper's")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def angle_curves(curves: pd.DataFrame, metric: str, title: str, path: Path) -> Path:
    """One panel per method (dataset, arch); one line per layer; degrees over epochs, mean over seeds."""
    columns = [c for c in curves.columns if c.startswith(metric + "/")]
    data = curves.dropna(subset=columns, how="all")
    data = _with_panels(data)
    data = data.assign(panel=[f"{m} ({p})" for m, p in zip(data.method, data.panel, strict=True)])
    keys = list(dict.fromkeys(data["panel"]))
    fig, axes = _panels(keys)
    for ax, panel in zip(axes, keys, strict=True):
        group = data[data["panel"] == panel]
        mean = group.groupby("epoch")[columns].mean()
        for col in columns:
            if mean[col].notna().any():
                ax.plot(mean.index, mean[col], label=col.split("/", 1)[1])
        ax.axhline(90, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, 180 if float(mean.max().max()) > 100 else 100)
        ax.set_xlabel("epoch")
        ax.set_ylabel("angle (degrees)")
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="layer", title_fontsize=7)
    fig.suptitle(textwrap.fill(title.capitalize() + " (90° = unrelated)", 60), fontsize=11)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
