"""The issue-16 study grids (results/fidelity/grids) cover what their README says: every Table 1(a) cell on
each dataset with 3 seeds, the DTP rows under both alpha conventions, and the same Table 5 hyperparameters as
the paper grid grids/table1-mnist5k.yaml (which test_paper_grids.py checks against papers.md)."""

from collections import Counter
from pathlib import Path

import pytest

from bioscale.grid import expand, load_grid
from bioscale.report.references import load_references

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "results" / "fidelity" / "grids"
HYPER = ("optim", "inverse_optim")


def _jobs(path: Path):
    return expand(load_grid(path))


def _cell(job) -> tuple:
    return job.spec.arch.name, job.spec.rule.name, job.spec.rule.params.get("schedule", "")


def _settings(job) -> dict:
    """What Table 5 sets for a cell: both optimisers and the rule's alpha and sigma."""
    out = {k: getattr(job.spec, k).model_dump() if getattr(job.spec, k) else None for k in HYPER}
    out.update({k: job.spec.rule.params.get(k) for k in ("alpha", "sigma")})
    return out


@pytest.mark.parametrize(("grid", "dataset", "epochs"), [
    ("fidelity-fashion-mnist", "fashion-mnist", {"fc": 5, "lc": 1, "conv": 1}),
    ("fidelity-mnist5k", "mnist-5k", {"fc": 20, "lc": 20, "conv": 20}),
])
def test_study_grid_is_table_1a_on_the_dataset_with_both_dtp_conventions(grid: str, dataset: str,
                                                                         epochs: dict[str, int]) -> None:
    jobs = _jobs(STUDY / f"{grid}.yaml")
    paper = Counter((r["arch"], r["rule"], r["schedule"]) for r in load_references() if r["table"] == "Table 1(a)")
    per_seed = {1: 3, 2: 6}  # every cell 3 seeds; DTP cells twice over (both conventions)
    cells = Counter(_cell(j) for j in jobs)
    assert set(cells) == set(paper)
    for cell, n in cells.items():
        assert n == per_seed[2 if cell[1] == "dtp" else 1], cell
    assert len(jobs) == 69 and len({j.job_id for j in jobs}) == 69
    for j in jobs:
        assert j.spec.dataset.name == dataset and j.spec.seed in (0, 1, 2)
        assert j.spec.train.epochs == epochs[j.spec.arch.name] and j.spec.train.batch_size == 128
    conventions = Counter((_cell(j), j.spec.rule.params["alpha_convention"]) for j in jobs if j.spec.rule.name == "dtp")
    assert set(conventions.values()) == {3} and len(conventions) == 8
    # the same hyperparameters as the paper grid, cell by cell
    reference = {_cell(j): _settings(j) for j in _jobs(ROOT / "grids" / "table1-mnist5k.yaml")}
    for j in jobs:
        assert _settings(j) == reference[_cell(j)], _cell(j)


def test_kp_study_grid_compares_the_decay_conventions_under_both_optimisers() -> None:
    jobs = _jobs(STUDY / "fidelity-kp.yaml")
    kinds = Counter((j.spec.rule.name, j.spec.rule.params.get("decay_mode"), j.spec.rule.params.get("decay"),
                     j.spec.optim.name) for j in jobs)
    assert set(kinds.values()) == {3} and len(jobs) == 24
    assert ("kp", "per_step", 1e-2, "adam") in kinds and ("kp", "per_step", 1e-2, "sgd") in kinds
    assert ("kp", "lr_scaled", 1e-2, "adam") in kinds and ("fa", None, None, "sgd") in kinds
    assert all(j.spec.dataset.name == "mnist-5k" and j.spec.arch.name == "fc" and j.spec.train.epochs == 20
               for j in jobs)


def _analyse():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("fidelity_analyse", ROOT / "results" / "fidelity" / "analyse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_study_verdicts_follow_the_rule_fixed_before_the_runs() -> None:
    """A finding holds when the better side's mean is lower by more than the larger std; a side without a
    finished seed leaves it undecided; DTP rows are split by alpha convention, other rules are not."""
    import pandas as pd

    an = _analyse()
    rows = []
    for seed, (par, alt) in enumerate([(10.0, 7.0), (11.0, 8.0), (12.0, 9.0)]):  # means 11 vs 8, std 1
        for schedule, err in (("parallel", par), ("alternating", alt)):
            rows.append({"rule": "dtp", "arch": "fc", "schedule": schedule, "test_error": err,
                         "convention": "per_example"})
            rows.append({"rule": "dtp", "arch": "fc", "schedule": schedule, "test_error": err + 0.5 * seed,
                         "convention": "batch_mean"})
    rows.append({"rule": "dfa", "arch": "fc", "schedule": "", "test_error": 9.5, "convention": ""})
    frame = pd.DataFrame(rows)
    found = {(v.question, v.better): v for key in ("1", "3") for v in an.verdicts(frame)[key]}
    assert found[("1. alternating beats parallel, FC", "DTP alt [per_example]")].holds is True  # 3 > 1
    assert found[("1. alternating beats parallel, FC", "DTP alt [batch_mean]")].holds is True  # 3 > 2
    assert found[("1. alternating beats parallel, LC", "DTP alt [per_example]")].holds is None
    assert found[("3. DFA behind DTP, FC", "DTP par [per_example]")].holds is False  # DFA better
    assert found[("3. DFA behind DTP, FC", "DTP alt [per_example]")].holds is True  # 9.5 - 8 > 1
    assert found[("3. DFA behind DTP, FC", "DTP alt [batch_mean]")].holds is False  # 9.5 - 8.5 < 1.5
    close = an.Verdict("q", "a", "b", an.Cell(8.0, 1.0, 3), an.Cell(8.9, 0.5, 3))
    assert close.holds is False
