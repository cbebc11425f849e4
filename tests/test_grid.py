import time
from pathlib import Path

import pytest
import yaml

from bioscale.errors import GridError
from bioscale.grid import combination_count, expand, load_grid, parse_set
from bioscale.spec import GridSpec


def write_grid(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _expand(tmp_path: Path, data: dict, sets: list[str] | None = None):
    path = write_grid(tmp_path, data)
    return expand(load_grid(path), parse_set(sets or []), source=str(path))


def test_cartesian_product_in_axis_order(tmp_path: Path, tiny_grid: dict) -> None:
    jobs = _expand(tmp_path, tiny_grid)
    assert [(j.spec.rule.name, j.spec.seed) for j in jobs] == [("bp", 0), ("bp", 1), ("fa", 0), ("fa", 1)]
    assert jobs[2].label == "fa fc synthetic s0"
    assert len({j.job_id for j in jobs}) == 4


def test_labels_are_compact_and_name_every_other_axis(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["axes"] = [{"rule.name": ["dtp"], "rule.params.schedule": ["alternating"], "arch": ["lc"]},
                         {"rule.name": ["fa"], "rule.params.last_layer_bp": [True], "optim.lr": [3e-4]}]
    labels = [j.label for j in _expand(tmp_path, tiny_grid)]
    assert labels == ["dtp/alt lc synthetic s0", "fa fc synthetic s0 last_layer_bp=true lr=0.0003"]


def test_defaults_are_resolved_into_the_spec(tmp_path: Path, tiny_grid: dict) -> None:
    fa = _expand(tmp_path, tiny_grid)[2].spec
    assert fa.rule.params == {"batch_manhattan": False, "feedback_init": "xavier", "last_layer_bp": False,
                              "feedback_dist": "normal"}
    assert fa.dataset.params["subset"] is None and fa.arch.params == {"hidden": [32, 32]}
    assert fa.inverse_optim is None


def test_exclude_and_overrides_apply_in_order(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["exclude"] = [{"rule.name": "fa", "seed": 1}]
    tiny_grid["overrides"] = [
        {"where": {"rule.name": "fa"}, "set": {"optim.lr": 0.5, "train.epochs": 3}},
        {"where": {"rule.name": "fa", "train.epochs": 3}, "set": {"optim.lr": 0.25}},
    ]
    jobs = _expand(tmp_path, tiny_grid)
    assert [(j.spec.rule.name, j.spec.seed) for j in jobs] == [("bp", 0), ("bp", 1), ("fa", 0)]
    assert jobs[0].spec.optim.lr == 1e-3
    assert jobs[2].spec.optim.lr == 0.25 and jobs[2].spec.train.epochs == 3


def test_cli_sets_apply_last_and_parse_yaml_values(tmp_path: Path, tiny_grid: dict) -> None:
    jobs = _expand(tmp_path, tiny_grid, ["train.epochs=7", "optim.betas=[0.9, 0.99]"])
    assert all(j.spec.train.epochs == 7 and j.spec.optim.betas == (0.9, 0.99) for j in jobs)


def test_shorthand_in_base_accepts_dotted_params(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["axes"] = {"rule.params.feedback_init": ["xavier", "xiao"]}
    tiny_grid["base"]["rule"] = "fa"
    jobs = _expand(tmp_path, tiny_grid)
    assert [j.spec.rule.params["feedback_init"] for j in jobs] == ["xavier", "xiao"]


def test_design_example_schedule_axis_spans_every_rule(tmp_path: Path, tiny_grid: dict) -> None:
    """Backward rules ignore `schedule`; the duplicate jobs that makes collapse into one."""
    tiny_grid["axes"] = {"rule.name": ["bp", "fa", "dtp"], "rule.params.schedule": ["parallel", "alternating"]}
    tiny_grid["exclude"] = [{"rule.name": "bp", "rule.params.schedule": "alternating"}]
    jobs = _expand(tmp_path, tiny_grid)
    assert [(j.spec.rule.name, j.spec.rule.params.get("schedule")) for j in jobs] == [
        ("bp", None), ("fa", None), ("dtp", "parallel"), ("dtp", "alternating")]


def test_axes_as_a_list_is_a_union_of_products(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["axes"] = [
        {"rule.name": ["bp"], "seed": [0, 1]},
        {"rule.name": ["fa"], "rule.params.last_layer_bp": [True, False]},
    ]
    jobs = _expand(tmp_path, tiny_grid)
    assert [(j.spec.rule.name, j.spec.seed, j.spec.rule.params.get("last_layer_bp")) for j in jobs] == [
        ("bp", 0, None), ("bp", 1, None), ("fa", 0, True), ("fa", 0, False)]


def test_target_rules_get_inverse_optim(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["axes"] = {"rule.name": ["dtp"], "rule.params.schedule": ["parallel", "alternating"]}
    tiny_grid["base"]["inverse_optim"] = {"lr": 1e-4}
    jobs = _expand(tmp_path, tiny_grid)
    assert [j.spec.rule.params["schedule"] for j in jobs] == ["parallel", "alternating"]
    assert all(j.spec.inverse_optim is not None and j.spec.inverse_optim.lr == 1e-4 for j in jobs)


def test_job_ids_are_pinned(tmp_path: Path, tiny_grid: dict) -> None:
    """Changing how ids are computed orphans every result on disk: this must fail loudly if it happens."""
    assert [j.job_id for j in _expand(tmp_path, tiny_grid)] == PINNED


PINNED = ['c9582420f109', '757201316501', '1d7758625573', '08637416cd33']


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["train.epoch=3"], r"unknown key 'train\.epoch'\. Did you mean 'epochs'\? Allowed here: epochs, batch_size"),
        (["rule.name=fx"], r"Unknown rule 'fx'\. Did you mean 'fa'\?"),
        (["arch.name=resnt18"], r"Did you mean 'resnet18'"),
        (["dataset.name=mnist5k"], r"Did you mean 'mnist-5k'"),
        (["rule.params.alpha=0.1"], r"'alpha' is a parameter of rules dtp only"),
        (["optim.name=adamw"], r"optim\.name: Input should be 'adam' or 'sgd'"),
        (["train.epochs=-1"], r"train\.epochs: Input should be greater than 0"),
        (["rule.name=dtp", "arch=resnet18"], r"needs a layered .* archs that run 'dtp' on 'synthetic': fc, lc, conv"),
            (["arch=fc", "dataset=imagenet"], r"\(rule\.name=bp, seed=0\): arch 'fc' has no preset for imagenet-shaped "
             r"data like 'imagenet' \(its presets: mnist, cifar10\).*archs that run 'bp' on 'imagenet': lc, conv, "
             r"resnet18, alexnet; datasets 'bp' on 'fc' can use: mnist, mnist-5k"),
            (["dataset=coco"], r"arch 'fc' is for classification and dataset 'coco' is a detection dataset"),
        (["rule.name=dfa", "arch=alexnet"], r"'dfa' needs a layered"),
        (["epochs"], r"expected PATH=VALUE"),
    ],
)
def test_errors_name_file_key_and_allowed_values(tmp_path: Path, tiny_grid: dict, sets: list[str],
                                                 expected: str) -> None:
    with pytest.raises(GridError, match=expected) as info:
        _expand(tmp_path, tiny_grid, sets)
    if sets != ["epochs"]:
        assert str(tmp_path / "g.yaml") in str(info.value)


def test_grid_file_errors(tmp_path: Path, tiny_grid: dict) -> None:
    with pytest.raises(GridError, match="does not exist"):
        load_grid(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(bad)
    tiny_grid["axis"] = tiny_grid.pop("axes")
    with pytest.raises(GridError, match=r"unknown key 'axis'\. Did you mean 'axes'\?"):
        load_grid(write_grid(tmp_path, tiny_grid))
    tiny_grid["axes"] = tiny_grid.pop("axis")
    tiny_grid["name"] = "bad name/../x"
    with pytest.raises(GridError, match="name"):
        load_grid(write_grid(tmp_path, tiny_grid))


def test_repo_grids_validate() -> None:
    for path in sorted(Path(__file__).parent.parent.joinpath("grids").glob("*.yaml")):
        assert expand(load_grid(path), source=str(path)), path


def test_detection_dataset_is_refused_with_a_reason(tmp_path: Path, tiny_grid: dict) -> None:
    with pytest.raises(GridError, match="'coco' is a detection dataset"):
        _expand(tmp_path, tiny_grid, ["dataset=coco"])


# ---- bad input: one paragraph naming the key and what is allowed (issue 11, point 8) ----------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"is a binary file, not a grid"),
        ("name: caf\u00e9\n".encode("latin-1"), r"is not UTF-8 text \(byte 9, line 1"),
        (b"name: x\nbase: " + b"[" * 5000 + b"]" * 5000, r"nested too deeply to read"),
        (b"name: x\nbase: " + b"[" * 60 + b"]" * 60, r"nested more than 50 levels deep"),
        (b"name: x\nbase: &a [*a]\n", r"nested more than 50 levels deep \(or an alias refers to itself\)"),
        (b"a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
         b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
         b"f: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n", r"holds more than 200,000 values"),
        (b"name: x\nbase: {seed: 2020-13-45}\n", r"holds a value YAML cannot build \(month must be in 1\.\.12\)"),
        (b"name: !!python/object/apply:os.system [echo hi]\n", r"not valid YAML: could not determine a constructor"),
        (b"name: x\nbase: {}\nexecutor: slurmm\n", r"executor: Unknown executor 'slurmm'.*inline, local"),
        (b"name: x\nbase: {}\nexecutor: {name: local, params: {workers: many}}\n",
         r"executor: executor 'local': workers is a positive integer"),
        (b"name: " + b"x" * 101 + b"\nbase: {}\n", r"name: String should have at most 100 characters"),
        (b"- 1\n- 2\n", r"a grid is a mapping with keys name, .*, logging, search, promote; this file holds"),
    ],
)
def test_unreadable_grid_files_are_one_sentence(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_bytes(data)
    with pytest.raises(GridError, match=expected) as info:
        load_grid(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_grid_file_that_is_a_folder_or_huge(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="is a folder, not a grid file"):
        load_grid(tmp_path)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    with pytest.raises(GridError, match=r"is 1,048,579 bytes; a grid file is a few kB"):
        load_grid(big)


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["optim.lr=[1,"], r"--set 'optim\.lr=\[1,': the value is not valid YAML: .* line 1, column 4\. The value"),
        (["optim.betas={a"], r"--set 'optim\.betas=\{a': the value is not valid YAML"),
        (["seed=2020-13-45"], r"--set 'seed=2020-13-45': the value holds a value YAML cannot build"),
        (["seed=!!python/name:os.system"], r"--set 'seed=!!python/name:os\.system': the value is not valid YAML"),
        (["train..epochs=2"], r"'train\.\.epochs' is not a dotted path of field names"),
        (["x=" + "[" * 3000], r"the value is nested too deeply"),
    ],
)
def test_set_values_that_are_not_yaml(sets: list[str], expected: str) -> None:
    with pytest.raises(GridError, match=expected) as info:
        parse_set(sets)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["optim.lr=.nan"], r"optim\.lr: Input should be a finite number \(got nan\)"),
        (["optim.eps=.inf"], r"optim\.eps: Input should be a finite number \(got inf\)"),
        (["optim.betas=[0.9, .inf]"], r"optim\.betas\.1: Input should be a finite number"),
        (["optim.momentum=-.inf"], r"optim\.momentum: Input should be a finite number"),
        (["optim.weight_decay=nan"], r"optim\.weight_decay: Input should be a finite number"),
        (["optim.schedule={gamma: .inf}"], r"optim\.schedule\.gamma: Input should be a finite number"),
        (["rule.name=dtp", "rule.params.alpha=.inf"], r"rule\.params\.alpha: Input should be a finite number"),
        (["rule.name=dtp", "rule.params.sigma=.nan"], r"rule\.params\.sigma: Input should be a finite number"),
        (["rule.name=kp", "rule.params.decay=.inf"], r"rule\.params\.decay: Input should be a finite number"),
        (["seed=-1"], r"seed: Value error, a seed is an integer from 0 to 4294967295 \(2\*\*32 - 1\)"),
        (["seed=4294967296"], r"seed: .*from 0 to 4294967295"),
        (["seed=18446744073709551616"], r"seed: .*from 0 to 4294967295"),
        (["train.device=cdua"], r"train\.device is one of auto, cpu, cuda, cuda:N, mps or xpu"),
    ],
)
def test_non_finite_numbers_and_out_of_range_seeds(tmp_path: Path, tiny_grid: dict, sets: list[str],
                                                    expected: str) -> None:
    with pytest.raises(GridError, match=expected):
        _expand(tmp_path, tiny_grid, sets)


def test_largest_seed_and_huge_finite_numbers_are_allowed(tmp_path: Path, tiny_grid: dict) -> None:
    """A huge lr is a result (the run diverges), not bad input; the largest seed torch takes via the loaders."""
    jobs = _expand(tmp_path, tiny_grid, ["seed=4294967295", "optim.lr=1e300", "train.device=cuda:1"])
    assert {j.spec.seed for j in jobs} == {4294967295} and jobs[0].spec.optim.lr == 1e300


def test_expansion_size_is_refused_before_building(tiny_grid: dict) -> None:
    grid = GridSpec.model_validate({**tiny_grid, "axes": [{"seed": list(range(3000)), "optim.lr": [0.1] * 1000},
                                                          {"seed": [0]}]})
    assert combination_count(grid.axes) == 3_000_001
    started = time.perf_counter()
    with pytest.raises(GridError, match=r"the axes make 3,000,001 combinations \(seed \(3,000\) x optim\.lr "
                                        r"\(1,000\) \+ seed \(1\)\), more than the limit of 10,000 jobs\..*"
                                        r"--max-jobs 3000001 \(Python: max_jobs=3000001\)"):
        expand(grid)
    assert time.perf_counter() - started < 1
    small = GridSpec.model_validate({**tiny_grid, "axes": {"seed": [0, 1, 2]}})
    with pytest.raises(GridError, match="more than the limit of 2 jobs"):
        expand(small, max_jobs=2)
    assert len(expand(small, max_jobs=3)) == 3
    with pytest.raises(GridError, match=r"max_jobs .* is a positive integer"):
        expand(small, max_jobs=0)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"exclude": [{"rule.nme": "bp"}]},
         r"exclude entry 1: unknown key 'rule\.nme'\. Did you mean 'rule\.name'\? Allowed after 'rule\.': name, "
         r"params\. Keys in `exclude` and `where` are dotted paths"),
        ({"exclude": [{"rule.name": "bp"}, {"rule.params.shedule": "parallel"}]},
         r"exclude entry 2: unknown key 'rule\.params\.shedule'\. Did you mean 'rule\.params\.schedule'\? Allowed "
         r"after 'rule\.params\.' \(the parameters of rule bp, dtp, fa\): .*schedule"),
        ({"exclude": [{"sed": 1}]}, r"unknown key 'sed'\. Did you mean 'seed'\? Allowed at the top level: dataset"),
        ({"exclude": [{"seed.x": 1}]}, r"'seed' is a single value, not a mapping"),
        ({"exclude": [{"optim.schedule.gama": 1}]}, r"Did you mean 'optim\.schedule\.gamma'\?"),
        ({"exclude": [{"dataset.params.shap": [1, 8, 8]}]},
         r"Did you mean 'dataset\.params\.shape'\? Allowed after 'dataset\.params\.' \(the parameters of dataset "
         r"synthetic\)"),
        ({"exclude": [{"rule.name": "fx"}]}, r"exclude entry 1: rule\.name: Unknown rule 'fx'\. Did you mean 'fa'\?"),
        ({"exclude": [{"rule.params.schedule": "paralel"}]},
         r"rule\.params\.schedule: 'paralel' is not a value this key can have \(Input should be 'parallel' or "
         r"'alternating'\), so it would never match"),
        ({"exclude": [{"train.epochs": "two"}]}, r"train\.epochs: 'two' is not a value this key can have"),
        ({"exclude": [{}]}, r"exclude entry 1 is empty, so it would drop every job"),
        ({"overrides": [{"where": {"optim.lrr": 1e-3}, "set": {"optim.lr": 0.1}}]},
         r"overrides entry 1, where: unknown key 'optim\.lrr'\. Did you mean 'optim\.lr'\?"),
        ({"overrides": [{"where": {"rule.name": "kp"}, "set": {"train.epoch": 1}}]},
         r"overrides entry 1, set: unknown key 'train\.epoch'\. Did you mean 'train\.epochs'\?"),
    ],
)
def test_misspelt_keys_in_exclude_and_where_are_errors(tmp_path: Path, tiny_grid: dict, extra: dict,
                                                       expected: str) -> None:
    tiny_grid["axes"] = {"rule.name": ["bp", "fa", "dtp"], "seed": [0, 1]}
    tiny_grid.update(extra)
    with pytest.raises(GridError, match=expected) as info:
        _expand(tmp_path, tiny_grid)
    assert str(info.value).startswith(str(tmp_path / "g.yaml")) and "\n" not in str(info.value)


def test_exclude_and_where_keys_that_exist_somewhere_in_the_grid_are_fine(tmp_path: Path, tiny_grid: dict) -> None:
    """`schedule` belongs to the target rules; a shared axis sets it on every rule, so it may be matched."""
    tiny_grid["axes"] = {"rule.name": ["bp", "fa", "dtp"], "rule.params.schedule": ["parallel", "alternating"]}
    tiny_grid["exclude"] = [{"rule.name": "fa", "rule.params.schedule": "alternating"}, {"rule": "bp"}]
    tiny_grid["overrides"] = [{"where": {"rule.params.schedule": "alternating", "dataset.params.subset": None},
                               "set": {"rule.params.alpha": 0.2}}]
    jobs = _expand(tmp_path, tiny_grid)
    assert [(j.spec.rule.name, j.spec.rule.params.get("schedule")) for j in jobs] == [
        ("fa", None), ("dtp", "parallel"), ("dtp", "alternating")]  # `rule: bp` is shorthand for rule.name
    assert jobs[2].spec.rule.params["alpha"] == 0.2 and jobs[1].spec.rule.params["alpha"] != 0.2


def test_params_of_an_unknown_component_cannot_be_checked_so_the_name_is_reported(tmp_path: Path,
                                                                                  tiny_grid: dict) -> None:
    tiny_grid["axes"] = {"rule.name": ["bp", "drtp"]}
    tiny_grid["exclude"] = [{"rule.params.feedback_scale": 2}]  # a param of a plugin rule that is not loaded
    with pytest.raises(GridError, match=r"Unknown rule 'drtp'.*--plugin"):
        _expand(tmp_path, tiny_grid)
