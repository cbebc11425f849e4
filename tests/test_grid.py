from pathlib import Path

import pytest
import yaml

from bioscale.errors import GridError
from bioscale.grid import expand, load_grid, parse_set


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
    assert jobs[2].label == "rule.name=fa, seed=0"
    assert len({j.job_id for j in jobs}) == 4


def test_defaults_are_resolved_into_the_spec(tmp_path: Path, tiny_grid: dict) -> None:
    fa = _expand(tmp_path, tiny_grid)[2].spec
    assert fa.rule.params == {"batch_manhattan": False, "feedback_init": "xavier", "last_layer_bp": False}
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
