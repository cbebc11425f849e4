"""``bioscale report --plots DIR``: learning curves, best test error against the paper's, and the
alignment-angle curves from the rules' diagnostics, as PNG files.

The same rules as the tables: a line or bar is the seeds of one setting (method, and the setting where it
varies), over finished jobs only unless ``include_running``.
"""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from bioscale.report.cells import setting_label
from bioscale.report.frame import in_means
from bioscale.report.layers import display
from bioscale.report.names import column_of, column_rank, method_of, method_rank

DPI = 110
ANGLES = (("angle_grad_bp", "angle between the rule's weight update and backprop's"),
          ("angle_w_b", "angle between forward weights W and feedback weights B"))


def write_plots(frame: pd.DataFrame, curves: pd.DataFrame, out_dir: Path, include_running: bool = False
                ) -> list[Path]:
    """Every figure the data allows; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = frame[in_means(frame, include_running)] if not frame.empty else frame
    written = []
    if not curves.empty and not frame.empty:
        keep = frame[["grid", "job_id", "setting"]]
        curves = curves.merge(keep, on=["grid", "job_id"], how="inner")
    if not curves.empty and not frame.empty:
        written.append(learning_curves(curves, out_dir / "learning_curves.png"))
        for metric, title in ANGLES:
            if any(c.startswith(metric + "/") and curves[c].notna().any() for c in curves.columns):
                written.append(angle_curves(curves, metric, title, out_dir / f"{metric}.png"))
    if not frame.empty and frame["test_error"].notna().any():
        written.append(final_errors(frame, out_dir / "test_error_vs_paper.png"))
    return written


def _with_panels(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `panel` ("dataset, COLUMN"), `method` and `line` (the method, its setting where any, its grid
    where several: what one line or bar stands for), sorted: datasets and columns in registration order,
    methods in the paper's row order (`_m`, kept for the colours)."""
    keys = list(zip(frame.rule, frame.schedule, frame.arch, strict=True))
    method = [method_of(*k) for k in keys]
    several = frame["grid"].nunique() > 1
    line = [m + (f" · {setting_label(s)}" if s else "") + (f" ({g})" if several else "")
            for m, s, g in zip(method, frame.setting, frame.grid, strict=True)]
    frame = frame.assign(
        panel=[f"{d}, {column_of(a)}" for d, a in zip(frame.dataset, frame.arch, strict=True)],
        method=method, line=line, _m=[(method_rank(*k), s) for k, s in zip(keys, frame.setting, strict=True)],
        _p=[column_rank(d, a) for d, a in zip(frame.dataset, frame.arch, strict=True)])
    return frame.sort_values(["_p", "_m"], kind="stable")


def _panels(n: int, sharey: bool = False, width: float = 5.2, height: float = 3.9
            ) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained", sharey=sharey)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _colors(frame: pd.DataFrame) -> dict[str, tuple[float, ...] | str]:
    """The same colour for a line in every panel, in the papers' row order: ten distinct colours, twenty
    when more lines share the figure."""
    ranks = dict(zip(frame["line"], frame["_m"], strict=True))
    lines = sorted(ranks, key=ranks.__getitem__)
    if len(lines) <= 10:
        return {m: f"C{i}" for i, m in enumerate(lines)}
    cmap = plt.get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(lines)}


def _legend(fig: plt.Figure, handles: list[plt.Line2D], title: str) -> None:
    """One legend for the figure, right of the panels; two columns when many lines share it."""
    fig.legend(handles=handles, loc="outside right center", fontsize=8, title=title, title_fontsize=8,
               frameon=False, ncols=2 if len(handles) > 14 else 1, alignment="left")


def _epoch_axis(ax: plt.Axes, epochs: pd.Series) -> None:
    """Whole epochs on the x axis; a single epoch in the middle of a short one."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs.nunique() == 1:
        ax.set_xlim(epochs.iloc[0] - 1, epochs.iloc[0] + 1)


def _log_errors(ax: plt.Axes, low: float, high: float) -> None:
    """Errors on a log axis when they span a factor of ten: the end of training, where methods differ by a
    few points, is then as readable as the start."""
    if not (low > 0 and high / low > 10):
        ax.set_ylim(bottom=0)
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curves(curves: pd.DataFrame, path: Path) -> Path:
    return _save(learning_figure(curves), path)


def learning_figure(curves: pd.DataFrame) -> plt.Figure:
    """One panel per dataset x arch; one colour per method (and setting); test error solid with a band of
    ± one std over seeds, train error dotted."""
    curves = _with_panels(curves)
    keys = list(dict.fromkeys(curves["panel"]))
    colors = _colors(curves)
    fig, axes = _panels(len(keys))
    kinds = set()
    for ax, panel in zip(axes, keys, strict=True):
        data = curves[curves["panel"] == panel]
        if "ap" in data and data["ap"].notna().any():
            _ap_panel(ax, data, colors)
            ax.set_title(panel)
            kinds.add("detection")
            continue
        kinds.add("classification")
        for line, group in data.groupby("line", sort=False):
            stats = group.groupby("epoch")[["train_error", "test_error"]].agg(["mean", "std"])
            test, std = stats[("test_error", "mean")], stats[("test_error", "std")]
            ax.plot(stats.index, test, color=colors[line], linewidth=1.6, marker="o" if len(stats) == 1 else None,
                    markersize=4)
            if std.notna().any():
                ax.fill_between(stats.index, test - std.fillna(0), test + std.fillna(0), color=colors[line],
                                alpha=0.18, linewidth=0)
            ax.plot(stats.index, stats[("train_error", "mean")], color=colors[line], linestyle=":",
                    linewidth=1.2, alpha=0.8)
        values = data[["train_error", "test_error"]].to_numpy(dtype=float)
        values = values[np.isfinite(values) & (values > 0)]
        _log_errors(ax, float(values.min()) if values.size else 0.0, float(values.max()) if values.size else 0.0)
        ax.set_title(panel)
        _epoch_axis(ax, data["epoch"])
        ax.set_ylabel("error (%)" + (", log scale" if ax.get_yscale() == "log" else ""))
        ax.grid(alpha=0.3, which="major")
    handles = [plt.Line2D([], [], color=c, label=m) for m, c in colors.items()]
    explained = {"classification": "test error: solid, band ± 1 std over seeds\ntrain error: dotted",
                 "detection": "COCO AP (detection): solid, band ± 1 std over seeds"}
    _legend(fig, handles, "\n".join(explained[k] for k in ("classification", "detection") if k in kinds))
    fig.suptitle("Learning curves (mean over seeds)")
    return fig


def _ap_panel(ax: plt.Axes, data: pd.DataFrame, colors: dict[str, Any]) -> None:
    """A detection panel: COCO AP (%) at the evaluated epochs (``train.eval_every``), mean over seeds with a
    band of ± one std; higher is better, linear scale."""
    for line, group in data.groupby("line", sort=False):
        stats = group.dropna(subset=["ap"]).astype({"ap": float}).groupby("epoch")["ap"].agg(["mean", "std"])
        ax.plot(stats.index, stats["mean"], color=colors[line], linewidth=1.6, marker="o", markersize=3)
        if stats["std"].notna().any():
            ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), color=colors[line], alpha=0.18, linewidth=0)
    _epoch_axis(ax, data["epoch"])
    ax.set_ylabel("COCO AP (%), higher is better")
    ax.grid(alpha=0.3, which="major")


def _epochs_text(values: pd.Series) -> str:
    v = values.dropna().astype(int)
    if v.empty:
        return ""
    lo, hi = int(v.min()), int(v.max())
    return f"{lo} epochs" if lo == hi else f"{lo}-{hi} epochs"


def final_errors(frame: pd.DataFrame, path: Path) -> Path:
    return _save(final_errors_figure(frame), path)


def final_errors_figure(frame: pd.DataFrame) -> plt.Figure:
    """Best test error per method (mean ± std over seeds) next to the paper's, one panel per dataset x arch;
    the legend says what each side trained on ("ours: mnist-5k, 10 epochs", "paper: full MNIST, 500
    epochs")."""
    frame = _with_panels(frame)
    keys = list(dict.fromkeys(frame["panel"]))
    n_bars = max(frame.groupby("panel")["line"].nunique())
    fig, axes = _panels(len(keys), width=max(5.2, 0.55 * n_bars + 1.5))
    for ax, panel in zip(axes, keys, strict=True):
        data = frame[frame["panel"] == panel]
        stats = data.groupby("line", sort=False).agg(ours=("test_error", "mean"), std=("test_error", "std"),
                                                      paper=("paper_test_error", "first"))
        x = np.arange(len(stats))
        has_std = stats["std"].notna().any()  # one seed: no error bar rather than a zero-width one
        epochs = _epochs_text(data["planned_epochs"] if data["planned_epochs"].notna().any() else data["epochs"])
        datasets = ", ".join(dict.fromkeys(data["dataset"]))
        ours = f"ours: {datasets}" + (f", {epochs}" if epochs else "") + (" (mean ± std over seeds)" if has_std
                                                                         else "")
        ax.bar(x - 0.2, stats["ours"], width=0.4, yerr=stats["std"] if has_std else None, capsize=3,
               label=ours, color="C0")
        if stats["paper"].notna().any():
            setup = next((s for s in data["paper_setup"] if isinstance(s, str) and s), "")
            ax.bar(x + 0.2, stats["paper"], width=0.4, color="C1",
                   label="paper" + (f": {setup}" if setup else ""))
        ax.set_xticks(list(x))
        ax.set_xticklabels(["\n".join(textwrap.wrap(s, 22)) for s in stats.index], rotation=35, ha="right",
                           fontsize=8, rotation_mode="anchor")
        ax.set_ylabel("best test error (%)")
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
        heights = stats[["ours", "paper"]].to_numpy(dtype=float) + np.nan_to_num(stats[["std"]].to_numpy(dtype=float))
        heights = heights[np.isfinite(heights)]
        ax.set_ylim(0, max(float(heights.max()) * 1.3 if heights.size else 0.0, 1.0))  # room for the legend
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Best test error: ours vs the paper's")
    return fig


def _layer_order(name: str) -> tuple[int, str, int, str]:
    """Input to output: the LC/conv stack, hidden layers, the output; module paths in numeric order."""
    m = re.fullmatch(r"(.+) (\d+)", name)
    if name == "output":
        return (2, "", 0, name)
    if m:
        return (1 if m.group(1) == "hidden" else 0, m.group(1), int(m.group(2)), name)
    return (0, "", 0, re.sub(r"\d+", lambda d: d.group().zfill(6), name))


HIDDEN_COLORS = ("C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9")


def _layer_colors(names: list[str]) -> dict[str, Any]:
    """A colour per layer name, the same in every panel: LC layers in blues and conv layers in purples,
    darker deeper; hidden layers in distinct hues (five of them in the MNIST FC net); the output black;
    module paths (ResNet, AlexNet) along viridis, input to output."""
    out: dict[str, Any] = {}
    hidden = [n for n in names if _layer_order(n)[1] == "hidden"]
    for i, n in enumerate(hidden):
        out[n] = HIDDEN_COLORS[i % len(HIDDEN_COLORS)]
    families = {"LC": "Blues", "conv": "Purples"}
    kinds = list(dict.fromkeys(_layer_order(n)[1] for n in names if n != "output" and n not in out))
    for kind in kinds:
        members = [n for n in names if n != "output" and n not in hidden and _layer_order(n)[1] == kind]
        cmap = plt.get_cmap(families.get(kind, "viridis"))
        low, high = (0.45, 0.95) if kind in families else (0.0, 0.85)
        for j, n in enumerate(members):
            out[n] = cmap(low + (high - low) * (j / max(len(members) - 1, 1)))
    out["output"] = "black"
    return out


def angle_panels(curves: pd.DataFrame, metric: str) -> list[tuple[str, pd.DataFrame]]:
    """Per panel (method and setting, dataset, arch): the mean over seeds of ``metric``'s angles by epoch,
    one column per layer, named as in the paper and ordered input to output."""
    columns = [c for c in curves.columns if c.startswith(metric + "/")]
    data = _with_panels(curves.dropna(subset=columns, how="all"))
    data = data.assign(panel=[f"{m} ({p})" for m, p in zip(data.line, data.panel, strict=True)])
    panels = []
    for panel in dict.fromkeys(data["panel"]):
        group = data[data["panel"] == panel]
        names = group["layer_names"].iloc[0] if isinstance(group["layer_names"].iloc[0], dict) else {}
        mean = group.groupby("epoch")[columns].mean().dropna(axis=1, how="all")
        mean.columns = [display(c, names) for c in mean.columns]
        panels.append((panel, mean[sorted(mean.columns, key=_layer_order)]))
    return panels


def angle_curves(curves: pd.DataFrame, metric: str, title: str, path: Path) -> Path:
    return _save(angle_figure(curves, metric, title), path)


def angle_figure(curves: pd.DataFrame, metric: str, title: str) -> plt.Figure:
    """One panel per method and setting (dataset, arch); one line per layer, named as in the paper;
    degrees over epochs, mean over seeds; one y-range for every panel."""
    panels = angle_panels(curves, metric)
    every = sorted({c for _, mean in panels for c in mean.columns}, key=_layer_order)
    colors = _layer_colors(every)
    top = max([float(np.nanmax(mean.to_numpy(dtype=float))) for _, mean in panels] + [90.0])
    top = 10 * math.ceil((top + 5) / 10)
    fig, axes = _panels(len(panels), sharey=True, width=4.6, height=3.4)
    for ax, (panel, mean) in zip(axes, panels, strict=True):
        for col in mean.columns:
            ax.plot(mean.index, mean[col], color=colors[col], linewidth=1.5, marker="o" if len(mean) == 1 else None,
                    markersize=4)
        ax.axhline(90, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(-3, top)  # a margin: an output layer trained on its true gradient sits at 0°
        _epoch_axis(ax, pd.Series(mean.index))
        ax.set_title("\n".join(textwrap.wrap(panel, 42)), fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("angle (degrees)")
    handles = [plt.Line2D([], [], color=colors[n], label=n, linewidth=2) for n in every]
    _legend(fig, handles, "layer")
    fig.suptitle(textwrap.fill(title[:1].upper() + title[1:] + ", mean over seeds (90° = unrelated)", 110),
                 fontsize=11)
    return fig
