"""Random search (issue 15): the draws (distribution, range, determinism, count) and the search block's
validation."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats

from bioscale.errors import GridError
from bioscale.grid import expand, load_grid, parse_set
from bioscale.search import SIGNIFICANT, draw, searched_keys
from bioscale.spec import Distribution, JobSpec

ROOT = Path(__file__).resolve().parent.parent
TABLE4 = ROOT / "grids" / "table4-search.yaml"


def _grid(tmp_path: Path, tiny_grid: dict, search: dict[str, Any], **extra: Any) -> Path:
    data = {**tiny_grid, "axes": {"rule.name": ["bp", "fa"]}, "search": search, **extra}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _expand(path: Path, sets: list[str] | None = None):
    return expand(load_grid(path), parse_set(sets or []), source=str(path))


def _independent(seed: int, key: str, index: int, lo: float, hi: float) -> float:
    """The documented recipe, written out: SeedSequence([seed, index, 4 little-endian words of sha256(key)]),
    PCG64, one double, exp of a uniform log, six significant digits."""
    digest = hashlib.sha256(key.encode()).digest()
    words = [int.from_bytes(digest[4 * i:4 * i + 4], "little") for i in range(4)]
    u = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index, *words]))).random()
    return float(f"{math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))):.6g}")


def test_a_draw_is_the_documented_computation() -> None:
    dist = Distribution.model_validate({"loguniform": [1e-5, 3e-4]})
    for seed, key, index in [(0, "optim.lr", 0), (2018, "optim.lr", 59), (7, "inverse_optim.lr", 3)]:
        assert draw(dist, seed, key, index) == _independent(seed, key, index, 1e-5, 3e-4)


def test_draws_are_pinned_across_machines_and_releases() -> None:
    # Values of the first configurations of grids/table4-search.yaml, written down when it was made: a
    # different machine, numpy release or key order must give exactly these (or every search's job ids move).
    jobs = _expand(TABLE4)
    first = jobs[0].spec
    assert (first.optim.lr, first.optim.betas, first.optim.eps) == (2.46621e-05, (0.9, 0.999), 1e-04)
    assert [j.spec.optim.lr for j in jobs[:4]] == [2.46621e-05, 1.06358e-05, 4.45921e-05, 0.000102064]


def test_draws_do_not_depend_on_key_order_or_on_other_keys(tmp_path: Path, tiny_grid: dict) -> None:
    space = {"optim.lr": {"loguniform": [1e-5, 3e-4]}, "optim.eps": {"choice": [1e-4, 1e-6, 1e-8]}}
    a = _expand(_grid(tmp_path, tiny_grid, {"n": 5, "seed": 3, "space": space}))
    b = _expand(_grid(tmp_path, tiny_grid, {"n": 5, "seed": 3, "space": dict(reversed(space.items()))}))
    assert [j.job_id for j in a] == [j.job_id for j in b]
    only_lr = _expand(_grid(tmp_path, tiny_grid, {"n": 5, "seed": 3, "space": {"optim.lr": space["optim.lr"]}}))
    assert [j.spec.optim.lr for j in only_lr] == [j.spec.optim.lr for j in a]
    other_seed = _expand(_grid(tmp_path, tiny_grid, {"n": 5, "seed": 4, "space": space}))
    assert {j.spec.optim.lr for j in other_seed}.isdisjoint({j.spec.optim.lr for j in a})


def test_configuration_i_is_the_same_draw_in_every_cell(tmp_path: Path, tiny_grid: dict) -> None:
    jobs = _expand(_grid(tmp_path, tiny_grid, {"n": 4, "space": {"optim.lr": {"uniform": [1e-4, 1e-3]}}}))
    assert len(jobs) == 8
    bp, fa = jobs[:4], jobs[4:]
    assert [j.spec.optim.lr for j in bp] == [j.spec.optim.lr for j in fa]
    assert [j.label for j in bp] == [f"bp fc synthetic s0 cfg={i}" for i in range(4)]


@pytest.mark.parametrize(("kind", "values"), [("loguniform", [1e-5, 3e-4]), ("uniform", [0.01, 0.3])])
def test_continuous_draws_follow_their_distribution(kind: str, values: list[float]) -> None:
    dist = Distribution.model_validate({kind: values})
    x = np.array([draw(dist, 11, "rule.params.sigma", i) for i in range(3000)])
    lo, hi = values
    assert x.min() >= lo and x.max() <= hi
    z = (np.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo)) if kind == "loguniform" else (x - lo) / (hi - lo)
    assert stats.kstest(z, "uniform").pvalue > 1e-3  # deterministic draws: this cannot flake
    # six significant digits, and JSON gives the same float back
    assert all(float(f"{v:.{SIGNIFICANT}g}") == v and json.loads(json.dumps(v)) == v for v in x.tolist())


def test_choice_and_int_draws_cover_every_value_evenly() -> None:
    choice = Distribution.model_validate({"choice": [[0.9, 0.99], [0.9, 0.999]]})
    counts = Counter(tuple(draw(choice, 1, "optim.betas", i)) for i in range(2000))
    assert set(counts) == {(0.9, 0.99), (0.9, 0.999)}
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
    ints = Distribution.model_validate({"int": [2, 5]})
    drawn = [draw(ints, 1, "arch.params.width", i) for i in range(2000)]
    assert all(isinstance(v, int) for v in drawn) and set(drawn) == {2, 3, 4, 5}  # both ends included
    assert stats.chisquare(list(Counter(drawn).values())).pvalue > 1e-3


def test_table4_grid_is_the_printed_space() -> None:
    grid = load_grid(TABLE4)
    assert grid.search is not None and grid.search.n == 60
    jobs = expand(grid, source=str(TABLE4))
    assert len(jobs) == 38 * 60
    cells = Counter(j.label.rsplit(" cfg=", 1)[0] for j in jobs)
    assert len(cells) == 38 and set(cells.values()) == {60}
    for job in jobs:
        s = job.spec
        assert 1e-5 <= s.optim.lr <= 3e-4 and s.optim.betas in ((0.9, 0.99), (0.9, 0.999))
        assert s.optim.eps in (1e-4, 1e-6, 1e-8)
        assert s.dataset.params["validation"] == {"mnist": 10000, "cifar10": 5000}[s.dataset.name]
        params = s.rule.params
        if s.rule.name in ("dtp", "sdtp", "aosdtp"):
            inv = s.inverse_optim
            assert inv is not None and 1e-5 <= inv.lr <= 3e-4 and inv.betas[0] == 0.9 and inv.eps in (1e-4, 1e-6, 1e-8)
            assert 0.01 <= params["sigma"] <= 0.3
            assert (0.01 <= params["alpha"] <= 0.2) if s.rule.name == "dtp" else "alpha" not in params
        else:
            assert s.inverse_optim is None and "sigma" not in params
    # ids survive a JSON round trip of the drawn values
    for job in jobs[:50]:
        assert JobSpec.model_validate(json.loads(json.dumps(job.spec.model_dump(mode="json")))).job_id() == job.job_id
    assert searched_keys(grid.search) == sorted(["optim.lr", "optim.betas", "optim.eps", "inverse_optim.lr",
                                                 "inverse_optim.betas", "inverse_optim.eps", "rule.params.sigma",
                                                 "rule.params.alpha"])


@pytest.mark.parametrize(("search", "expected"), [
    ({"n": 2, "space": {"optim.lr": {"loguniform": [3e-4, 1e-5]}}}, r"loguniform: \[0.0003, 1e-05\] is inverted"),
    ({"n": 2, "space": {"optim.lr": {"uniform": [1e-3, 1e-3]}}}, r"uniform: \[0.001, 0.001\] is empty"),
    ({"n": 2, "space": {"optim.lr": {"loguniform": [0, 1e-3]}}}, "must lie above 0"),
    ({"n": 2, "space": {"seed": {"int": [3, 1]}}}, r"int: \[3, 1\] is inverted"),
    ({"n": 2, "space": {"optim.eps": {"choice": []}}}, "the list is empty"),
    ({"n": 2, "space": {"optim.lr": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
    ({"n": 2, "space": {"optim.lr": {"uniform": [0, 1], "choice": [1]}}}, "takes one distribution"),
    ({"n": 0, "space": {"optim.lr": {"uniform": [0.1, 1]}}}, "search.n"),
    ({"n": 2, "space": {"optim.lrr": {"uniform": [0.1, 1]}}}, r"unknown key 'optim.lrr'. Did you mean 'optim.lr'"),
    ({"n": 2, "space": {"rule.params.alpha": {"uniform": [0.1, 1]}}},
     r"unknown key 'rule.params.alpha'.*the parameters of rule bp, fa"),
    ({"n": 2, "space": {"optim.lr": {"choice": [-1]}}}, r"cfg=0\): optim.lr: Input should be greater than 0"),
    ({"n": 2, "space": {"optim.name": {"choice": ["adam", "rmsprop"]}}}, "optim.name: .rmsprop. is not a value"),
    ({"n": 2, "space": {"rule.name": {"choice": ["bp", "fa"]}}}, "'rule.name' cannot be searched"),
    ({"n": 2, "space": {"train.epochs": {"int": [1, 3]}}}, "'train.epochs' cannot be searched"),
    ({"n": 2}, "no key to search"),
    ({"n": 2, "conditional": [{"where": {"rule.nam": "fa"}, "space": {"optim.lr": {"uniform": [0.1, 1]}}}]},
     r"conditional entry 1, where: unknown key 'rule.nam'"),
])
def test_bad_search_blocks_are_refused_clearly(tmp_path: Path, tiny_grid: dict, search: dict, expected: str) -> None:
    with pytest.raises(GridError, match=expected):
        _expand(_grid(tmp_path, tiny_grid, search))


def test_a_searched_key_cannot_also_be_an_axis_or_a_set(tmp_path: Path, tiny_grid: dict) -> None:
    search = {"n": 2, "space": {"optim.lr": {"uniform": [1e-4, 1e-3]}}}
    with pytest.raises(GridError, match=r"'optim.lr' is both an axis and a searched key"):
        _expand(_grid(tmp_path, {**tiny_grid, "axes": {"optim.lr": [1e-3]}}, search, axes={"optim.lr": [1e-3]}))
    with pytest.raises(GridError, match=r"--set optim.lr=\.\.\. fixes a searched key"):
        _expand(_grid(tmp_path, tiny_grid, search), ["optim.lr=0.001"])


def test_promote_needs_a_search_and_increasing_rungs(tmp_path: Path, tiny_grid: dict) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**tiny_grid, "promote": {"rungs": [1]}}))
    with pytest.raises(GridError, match="add a `search:` block"):
        load_grid(path)
    search = {"n": 2, "space": {"optim.lr": {"uniform": [1e-4, 1e-3]}}}
    cases = [({"rungs": [5, 5]}, "must increase strictly"), ({"rungs": [1], "keep": 0}, "keeps no job"),
             ({"rungs": [1], "keep": "3/2"}, "outside"), ({"rungs": [1], "metric": "test_error"}, "val_error")]
    for promote, expected in cases:
        with pytest.raises(GridError, match=expected):
            load_grid(_grid(tmp_path, tiny_grid, search, promote=promote))


def test_the_job_limit_counts_configurations(tmp_path: Path, tiny_grid: dict) -> None:
    path = _grid(tmp_path, tiny_grid, {"n": 600, "space": {"optim.lr": {"uniform": [1e-4, 1e-3]}}})
    with pytest.raises(GridError, match=r"1,200 combinations .* x 600 search configurations"):
        expand(load_grid(path), max_jobs=1000)


def test_grid_validate_shows_the_expanded_count_and_refuses_bad_ranges(tmp_path: Path, tiny_grid: dict) -> None:
    from tests.test_cli import bioscale

    good = bioscale("grid", "validate", str(TABLE4))
    assert good.returncode == 0, good.stderr
    assert "valid, 2280 jobs (38 combinations of the axes x 60 search configurations, seed 2018)" in good.stdout
    bad = _grid(tmp_path, tiny_grid, {"n": 3, "space": {"optim.lr": {"loguniform": [3e-4, 1e-5]}}})
    out = bioscale("grid", "validate", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "search.space.optim.lr" in out.stderr and "is inverted" in out.stderr
