"""--where / --only: which jobs a selection picks, and the messages when it cannot pick any."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bioscale.errors import BioscaleError
from bioscale.runner import expand_grid
from bioscale.select import (
    NothingSelected,
    check_keys,
    job_candidates,
    parse_selection,
    select,
    select_jobs,
    store_candidates,
)
from bioscale.store import Store

GRID = {
    "name": "sel",
    "base": {"dataset": {"name": "synthetic", "params": {"train_size": 64, "test_size": 32, "shape": [1, 8, 8]}},
             "arch": {"name": "fc", "params": {"hidden": [8]}}, "rule": "bp",
             "optim": {"name": "adam", "lr": 1.0e-3}, "train": {"epochs": 1, "batch_size": 32}, "seed": 0},
    "axes": {"rule.name": ["bp", "fa", "dtp"], "rule.params.schedule": ["parallel", "alternating"], "seed": [0, 1]},
    "overrides": [{"where": {"rule.name": "fa", "seed": 1}, "set": {"optim.lr": 1.0e-4}}],
}


@pytest.fixture
def grid(tmp_path: Path, grid_writer) -> tuple:
    spec, jobs = expand_grid(grid_writer(tmp_path, GRID))
    return spec, jobs


def pick(grid: tuple, where: list[str] | None = None, only: list[str] | None = None) -> list[str]:
    spec, jobs = grid
    return [j.label for j in select_jobs(jobs, parse_selection(where, only), spec)]


def test_where_entries_all_hold(grid: tuple) -> None:
    assert pick(grid, ["rule.name=dtp", "seed=1"]) == ["dtp/par fc synthetic s1", "dtp/alt fc synthetic s1"]
    assert pick(grid, ["rule.params.schedule=alternating"]) == ["dtp/alt fc synthetic s0", "dtp/alt fc synthetic s1"]
    assert pick(grid, ["rule=fa"]) == ["fa fc synthetic s0", "fa fc synthetic s1"]  # shorthand for rule.name
    assert len(pick(grid)) == 8  # no selection: every job


def test_where_values_are_parsed_like_set_values(grid: tuple) -> None:
    """YAML reads 1e-4 as text: it still matches the job's 0.0001 (set by the grid's override)."""
    assert pick(grid, ["optim.lr=1e-4"]) == ["fa fc synthetic s1"]
    assert pick(grid, ["optim.lr=0.0001"]) == ["fa fc synthetic s1"]
    assert pick(grid, ["arch.params.hidden=[8]", "rule.name=bp"]) == ["bp fc synthetic s0", "bp fc synthetic s1"]
    with pytest.raises(NothingSelected):
        pick(grid, ["seed=true"])  # true is not 1


def test_only_entries_are_alternatives(grid: tuple) -> None:
    _spec, jobs = grid
    dtp_alt_s0 = next(j for j in jobs if j.label == "dtp/alt fc synthetic s0")
    assert pick(grid, only=[dtp_alt_s0.job_id]) == [dtp_alt_s0.label]
    assert pick(grid, only=[dtp_alt_s0.job_id[:6]]) == [dtp_alt_s0.label]  # a unique prefix
    assert pick(grid, only=["DTP/ALT", "bp fc synthetic s1"]) == ["bp fc synthetic s1", "dtp/alt fc synthetic s0",
                                                                   "dtp/alt fc synthetic s1"]
    # --where and --only together: both must hold
    assert pick(grid, ["seed=0"], ["dtp/alt"]) == ["dtp/alt fc synthetic s0"]


def test_an_ambiguous_id_prefix_is_refused(grid: tuple) -> None:
    _spec, jobs = grid
    candidates = job_candidates(jobs)
    twins = [replace(candidates[0], job_id="abcd00000001"), replace(candidates[1], job_id="abcd00000002")]
    with pytest.raises(BioscaleError, match=r"--only 'abcd' is the start of 2 job ids \(abcd00000001, "
                                            r"abcd00000002\): give more of the id"):
        select(twins, parse_selection(only=["abcd"]))
    assert [c.job_id for c in select(twins, parse_selection(only=["abcd00000002"]))] == ["abcd00000002"]


def test_unknown_keys_and_impossible_values_are_refused_with_what_is_allowed(grid: tuple) -> None:
    with pytest.raises(BioscaleError, match=r"unknown key 'rule.nme'\. Did you mean 'rule.name'\? Allowed after "
                                            r"'rule.': name, params"):
        pick(grid, ["rule.nme=fa"])
    with pytest.raises(BioscaleError, match=r"unknown key 'seeed'\. Did you mean 'seed'\?.*Allowed at the top "
                                            r"level: dataset, arch, rule, optim"):
        pick(grid, ["seeed=0"])
    with pytest.raises(BioscaleError, match=r"'paralel' is not a value this key can have"):
        pick(grid, ["rule.params.schedule=paralel"])
    with pytest.raises(BioscaleError, match=r"Unknown rule 'fb'\. Did you mean 'fa'\?"):
        pick(grid, ["rule.name=fb"])
    with pytest.raises(BioscaleError, match="--where 'seed': expected PATH=VALUE"):
        pick(grid, ["seed"])


def test_selecting_nothing_says_what_there_is(grid: tuple) -> None:
    with pytest.raises(NothingSelected, match=r"--where rule.name=kp selects none of the 8 jobs of grid sel\. "
                                              r"rule.name is bp, dtp, fa there\."):
        pick(grid, ["rule.name=kp"])  # a known rule, not in this grid
    with pytest.raises(NothingSelected, match=r"--only 'dtp/alt lcc' matches no job id and no job label.*Close "
                                              r"labels: 'dtp/alt fc synthetic s1'; 'dtp/alt fc synthetic s0'"):
        pick(grid, only=["dtp/alt lcc"])
    with pytest.raises(NothingSelected, match="selects none"):
        pick(grid, ["seed=1"], ["bp fc synthetic s0"])


def test_jobs_in_a_store_are_selected_and_labelled_like_the_grid_s(grid: tuple, tmp_path: Path) -> None:
    """Without a grid file (report, status): labels from the keys that vary between the grid's jobs."""
    _spec, jobs = grid
    store = Store(tmp_path / "results")
    for job in jobs:
        store.job_dir(job.grid, job.job_id).write_spec(job.grid, job.spec)
    (store.root / "sel" / "dead00000000").mkdir()
    (store.root / "sel" / "dead00000000" / "spec.json").write_text("{not json")
    candidates = store_candidates(store)
    labels = {c.job_id: c.label for c in candidates}
    fa1 = next(j for j in jobs if j.label == "fa fc synthetic s1")
    assert labels[fa1.job_id] == "fa fc synthetic s1 lr=0.0001"  # the override made optim.lr vary
    assert labels["dead00000000"] == "?"
    chosen = select(candidates, parse_selection(["rule.name=fa"], ["lr=0.0001"]))
    assert [c.job_id for c in chosen] == [fa1.job_id]
    assert [c.job_id for c in select(candidates, parse_selection(only=["dead00000000"]))] == ["dead00000000"]
    with pytest.raises(BioscaleError, match=r"Did you mean 'rule.params.schedule'\?"):
        check_keys(parse_selection(["rule.params.schedul=parallel"]), candidates)
