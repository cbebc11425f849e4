"""Issue 16 study: the verdicts of results/fidelity/README.md ("Questions, and how they will be decided"),
computed from the study's store, written to results/fidelity/findings.md.

    python results/fidelity/analyse.py [--results results/fidelity/runs] [--out results/fidelity/findings.md]

Every number is a mean ± sample std over the seeds of one setting (finished jobs only), in % test error, the
best over the evaluated epochs as in Bartunov et al.'s Table 1 ("best errors achieved in 500 epochs"). A
difference "holds" when the two means differ, in the stated direction, by more than the larger of the two
stds (the rule fixed before the runs). Rows with fewer than the grid's seeds finished are marked.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

GRIDS = {"fidelity-fashion-mnist": "Fashion-MNIST", "fidelity-mnist5k": "mnist-5k"}
CONVENTIONS = ("per_example", "batch_mean")
TP_RULES = ("dtp", "sdtp", "aosdtp")


@dataclass(frozen=True)
class Cell:
    """The seeds of one setting: mean and sample std of the best test error, and how many seeds."""

    mean: float
    std: float
    n: int

    def text(self) -> str:
        if self.n == 0:
            return "not run"
        std = "" if self.n < 2 else f" ± {self.std:.2f}"
        return f"{self.mean:.2f}{std} (n={self.n})"


@dataclass(frozen=True)
class Verdict:
    question: str
    better: str
    worse: str
    a: Cell
    b: Cell

    @property
    def holds(self) -> bool | None:
        """``better`` has the lower error by more than the larger std; None when a side has no finished seed."""
        if self.a.n == 0 or self.b.n == 0:
            return None
        margin = max(_zero(self.a.std), _zero(self.b.std))
        return self.b.mean - self.a.mean > margin

    def row(self) -> str:
        word = {True: "holds", False: "does not hold", None: "not decided (missing runs)"}[self.holds]
        gap = self.b.mean - self.a.mean if self.a.n and self.b.n else math.nan
        return (f"| {self.question} | {self.better}: {self.a.text()} | {self.worse}: {self.b.text()} | "
                f"{gap:+.2f} | {word} |")


def _zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def load(results: Path, grid: str) -> pd.DataFrame:
    """The finished jobs of ``grid`` with the DTP convention as a column (empty when nothing ran yet)."""
    from bioscale.runner import load_results

    try:
        frame = load_results(results, grid)
    except Exception:  # the grid has not run yet
        return pd.DataFrame()
    frame = frame[frame["status"] == "done"].copy()
    frame["convention"] = [_convention(s) for s in frame["setting"].fillna("")]
    return frame


def _convention(setting: str) -> str:
    for name in CONVENTIONS:
        if f"alpha_convention={name}" in setting:
            return name
    return ""


def cell(frame: pd.DataFrame, rule: str, arch: str, schedule: str | None = None, convention: str = "",
         column: str = "test_error") -> Cell:
    """Mean ± std over the seeds of one row of Table 1 (DTP rows under one alpha convention)."""
    if frame.empty:
        return Cell(math.nan, math.nan, 0)
    pick = (frame["rule"] == rule) & (frame["arch"] == arch)
    if schedule is not None:
        pick &= frame["schedule"] == schedule
    if rule == "dtp":
        pick &= frame["convention"] == convention
    values = frame.loc[pick, column].astype(float)
    return Cell(float(values.mean()) if len(values) else math.nan,
                float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values))


def _name(rule: str, schedule: str | None = None, convention: str = "") -> str:
    label = {"dtp": "DTP", "sdtp": "SDTP", "aosdtp": "AO-SDTP", "fa": "FA", "dfa": "DFA", "bp": "BP"}[rule]
    if schedule:
        label += " " + {"parallel": "par", "alternating": "alt"}[schedule]
    if convention:
        label += f" [{convention}]"
    return label


def verdicts(frame: pd.DataFrame) -> dict[str, list[Verdict]]:
    """Findings 1-5 for one dataset, keyed by finding."""
    out: dict[str, list[Verdict]] = {"1": [], "2": [], "3": [], "5": []}
    for arch in ("fc", "lc"):
        for rule in TP_RULES:
            for conv in CONVENTIONS if rule == "dtp" else ("",):
                out["1"].append(Verdict(f"1. alternating beats parallel, {arch.upper()}",
                                        _name(rule, "alternating", conv), _name(rule, "parallel", conv),
                                        cell(frame, rule, arch, "alternating", conv),
                                        cell(frame, rule, arch, "parallel", conv)))
        for schedule in ("parallel", "alternating"):
            out["2"].append(Verdict(f"2. AO-SDTP improves on SDTP, {arch.upper()}", _name("aosdtp", schedule),
                                    _name("sdtp", schedule), cell(frame, "aosdtp", arch, schedule),
                                    cell(frame, "sdtp", arch, schedule)))
            for conv in CONVENTIONS:
                out["3"].append(Verdict(f"3. DFA behind DTP, {arch.upper()}", _name("dtp", schedule, conv),
                                        _name("dfa"), cell(frame, "dtp", arch, schedule, conv),
                                        cell(frame, "dfa", arch)))
        out["5"].append(Verdict(f"5. FA behind BP, {arch.upper()}", "BP", "FA", cell(frame, "bp", arch),
                                cell(frame, "fa", arch)))
    return out


@dataclass(frozen=True)
class Gain:
    """FC error minus LC error of one rule (positive: LC helps), with the std of that difference."""

    name: str
    fc: Cell
    lc: Cell

    @property
    def value(self) -> float:
        return self.fc.mean - self.lc.mean

    @property
    def std(self) -> float:
        return math.sqrt(_zero(self.fc.std) ** 2 + _zero(self.lc.std) ** 2)


def lc_gains(frame: pd.DataFrame) -> list[Gain]:
    """Finding 4: every rule's FC -> LC gain, BP's first."""
    rows = [("bp", None, ""), ("fa", None, ""), ("dfa", None, "")]
    rows += [("dtp", s, c) for s in ("parallel", "alternating") for c in CONVENTIONS]
    rows += [(r, s, "") for r in ("sdtp", "aosdtp") for s in ("parallel", "alternating")]
    return [Gain(_name(r, s, c), cell(frame, r, "fc", s, c), cell(frame, r, "lc", s, c)) for r, s, c in rows]


def gain_rows(gains: list[Gain]) -> list[str]:
    bp = gains[0]
    lines = ["| Rule | FC | LC | gain FC − LC | BP's gain larger by more than the larger std? |",
             "|---|---|---|---|---|"]
    for g in gains:
        if g is bp:
            verdict = "(reference)"
        elif g.fc.n == 0 or g.lc.n == 0 or bp.fc.n == 0 or bp.lc.n == 0:
            verdict = "not decided (missing runs)"
        else:
            verdict = "yes" if bp.value - g.value > max(bp.std, g.std) else "no"
        lines.append(f"| {g.name} | {g.fc.text()} | {g.lc.text()} | {g.value:+.2f} ± {g.std:.2f} | {verdict} |")
    return lines


def convention_score(frames: dict[str, pd.DataFrame], per_dataset: dict[str, dict[str, list[Verdict]]]
                     ) -> dict[str, tuple[int, int, float]]:
    """Finding 6: per convention, (verdicts of findings 1 and 3 on its DTP rows that hold, verdicts decided,
    mean best test error of its DTP jobs over both datasets)."""
    score: dict[str, tuple[int, int, float]] = {}
    for conv in CONVENTIONS:
        mine = [v for found in per_dataset.values() for key in ("1", "3") for v in found[key]
                if f"[{conv}]" in v.better + v.worse]
        errors = [e for f in frames.values() if not f.empty
                  for e in f.loc[(f["rule"] == "dtp") & (f["convention"] == conv), "test_error"].astype(float)]
        score[conv] = (sum(bool(v.holds) for v in mine), sum(v.holds is not None for v in mine),
                       sum(errors) / len(errors) if errors else math.nan)
    return score


def kp_alignment(results: Path) -> list[str]:
    """Finding 7: per KP setting, the largest W-B angle over the layers at the last epoch (mean and max over
    seeds) and the best test error."""
    from bioscale.report.frame import load_curves
    from bioscale.store import Store

    frame = load(results, "fidelity-kp")
    if frame.empty:
        return ["fidelity-kp has not run yet."]
    curves = load_curves(Store(results), "fidelity-kp")
    angle_cols = [c for c in curves.columns if c.startswith("angle_w_b/")]
    last = curves.sort_values("epoch").groupby("job_id").tail(1).set_index("job_id")
    frame = frame.set_index("job_id")
    frame["max_angle"] = last.loc[frame.index, angle_cols].max(axis=1) if angle_cols else math.nan
    frame["last_epoch"] = last.loc[frame.index, "epoch"]
    lines = ["| Rule | setting | epochs | max W-B angle over layers, mean over seeds (max) | best test error |",
             "|---|---|---|---|---|"]
    for (rule, setting), group in frame.groupby(["rule", "setting"], sort=True, dropna=False):
        angles = group["max_angle"].astype(float)
        err = group["test_error"].astype(float)
        lines.append(f"| {rule} | {setting or '-'} | {int(group['last_epoch'].max())} | "
                     f"{angles.mean():.1f}° ({angles.max():.1f}°) | {err.mean():.2f} ± {err.std(ddof=1):.2f} "
                     f"(n={len(group)}) |")
    return lines


def report(results: Path) -> str:
    lines = ["# Fidelity study: verdicts", "",
             "Written by `results/fidelity/analyse.py` from the store `results/fidelity/runs`: best test error "
             "(%), mean ± sample std over seeds (n = finished seeds); a finding holds when the means differ in "
             "its direction by more than the larger std. Read with README.md, which states the question and "
             "the budget (epochs) of each grid.", ""]
    per_dataset: dict[str, dict[str, list[Verdict]]] = {}
    frames: dict[str, pd.DataFrame] = {}
    for grid, dataset in GRIDS.items():
        frame = frames[dataset] = load(results, grid)
        lines += [f"## {dataset} ({grid}: {len(frame)} finished jobs)", ""]
        if frame.empty:
            lines += ["Not run yet.", ""]
            continue
        found = verdicts(frame)
        per_dataset[dataset] = found
        lines += ["| Finding | better | worse | gap (worse − better) | verdict |", "|---|---|---|---|---|"]
        lines += [v.row() for key in ("1", "2", "3", "5") for v in found[key]]
        lines += ["", "Finding 4, LC helps BP more than the bio rules:", "", *gain_rows(lc_gains(frame)), ""]
    lines += ["## Finding 6: which alpha convention reproduces findings 1 and 3 for the DTP rows", "",
              "| Convention | findings that hold | decided | mean best test error of its DTP rows |",
              "|---|---|---|---|"]
    for conv, (held, decided, err) in convention_score(frames, per_dataset).items():
        lines.append(f"| {conv} | {held} | {decided} | {err:.2f} |")
    lines += ["", "## Finding 7: Kolen-Pollack alignment (fidelity-kp, mnist-5k)", "", *kp_alignment(results)]
    return "\n".join(lines) + "\n"


def main() -> None:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=here / "runs")
    p.add_argument("--out", type=Path, default=here / "findings.md")
    args = p.parse_args()
    text = report(args.results)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
