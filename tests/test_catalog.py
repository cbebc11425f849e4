"""The registrations are the one source: records are complete, torch-free to read, checked when made, and a
new registration reaches validation, `list`, the report's order and the compatibility check unedited."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bioscale.catalog import ARCHS, DATASETS, RULES, compat, register_arch, register_rule
from bioscale.catalog.discover import component_modules
from bioscale.errors import GridError
from bioscale.grid import resolve
from bioscale.listing import list_table, rows
from bioscale.report.frame import JOB_COLUMNS
from bioscale.report.names import column_of, method_of, method_rank
from bioscale.report.paper_layout import paper_table
from bioscale.rules.base import BackwardRule, Rule
from bioscale.rules.bp import BP
from bioscale.rules.feedback import BackwardParams
from bioscale.spec import Strict

REPO = Path(__file__).resolve().parent.parent
REGISTRIES = {"rules": RULES, "archs": ARCHS, "datasets": DATASETS}


def _no_torch(code: str) -> None:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nassert 'torch' not in sys.modules, 'torch'"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr


def test_reading_every_record_does_not_import_torch() -> None:
    _no_torch("from bioscale.catalog import RULES, ARCHS, DATASETS\n"
              "for r in (RULES, ARCHS, DATASETS):\n    [e.params() for e in r.values() if e.name != 'coco']\n"
              "import bioscale.listing as l\n[l.rows(k) for k in l.KINDS]")


def test_grid_validate_does_not_import_torch() -> None:
    _no_torch("import sys\nfrom bioscale import cli\nsys.argv = ['bioscale', 'grid', 'validate', 'grids/table1.yaml']\n"
              "try:\n    cli.main()\nexcept SystemExit as e:\n    assert not e.code, e.code")


def test_discovery_finds_the_registering_modules_only() -> None:
    found = component_modules()
    assert "bioscale.rules.feedback" in found and "bioscale.models.presets" in found
    assert "bioscale.data.mnist5k" in found
    assert not any(m.endswith(("base", "loaders", "bundle", "summary", "angles")) for m in found)
    modules = {r.impl.__module__ for r in (*RULES.values(), *ARCHS.values(), *DATASETS.values())}
    assert {m for m in modules if m.startswith("bioscale.")} == set(found)  # others: installed plugins


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_records_are_complete_and_ordered(kind: str) -> None:
    registry = REGISTRIES[kind]
    records = registry.values()
    assert [r.name for r in records] == registry.names() and records
    orders = [r.order for r in records]
    assert orders == sorted(orders) and len(set(orders)) == len(orders), "orders must be distinct"
    for r in records:
        assert r.summary and issubclass(r.params, Strict)
        assert r.params.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("name", RULES.names())
def test_rule_records(name: str) -> None:
    r = RULES.get(name)
    assert issubclass(r.impl, BackwardRule) == (r.family == "backward")
    assert r.display and r.source
    assert ("schedule" in r.params.model_fields) == (r.family == "target")


@pytest.mark.parametrize("name", ARCHS.names())
def test_arch_records_can_be_built_for_some_dataset(name: str) -> None:
    a = ARCHS.get(name)
    assert a.display and compat.datasets_for_arch(a)


def test_compatibility_is_one_pure_check() -> None:
    fc, lc, resnet = ARCHS.get("fc"), ARCHS.get("lc"), ARCHS.get("resnet18")
    imagenet, digits, coco = DATASETS.get("imagenet"), DATASETS.get("digits"), DATASETS.get("coco")
    assert compat.problems(RULES.get("bp"), fc, digits) == []
    assert "no preset" in compat.problems(RULES.get("bp"), fc, imagenet)[0]
    assert compat.problems(RULES.get("bp"), fc, imagenet, fc.params(hidden=[64])) == []
    assert compat.problems(RULES.get("bp"), lc, imagenet) == []
    assert "layered" in compat.problems(RULES.get("dtp"), resnet, digits)[0]
    assert "detection" in compat.problems(RULES.get("fa"), fc, coco)[0]
    assert not compat.compatible("dfa", "alexnet", "mnist")


def test_an_explicit_net_makes_a_presetless_dataset_valid() -> None:
    raw = {"dataset": "imagenet", "arch": {"name": "fc", "params": {"hidden": [32]}}, "rule": "bp"}
    assert resolve(raw).arch.params == {"hidden": [32]}
    with pytest.raises(GridError, match="no preset"):
        resolve({**raw, "arch": "fc"})


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_list_shows_every_registration_and_keeps_brackets(kind: str) -> None:
    listed = rows(kind)
    assert [r[0] for r in listed] == REGISTRIES[kind].names()
    console = Console(record=True, width=400)
    console.print(list_table(kind))
    text = console.export_text()
    for name, summary, _ in listed:
        assert name in text and summary.split(" [")[-1][:20] in text  # the [notes] survive rich markup
    if kind == "rules":
        assert "[target; archs: fc, lc, conv]" in text and "[backward; archs: fc, lc, conv, resnet18" in text


def test_paper_layout_rows_follow_the_registered_order() -> None:
    keys = [(r.name, s, "fc") for r in RULES.values()
            for s in (["parallel", "alternating"] if r.family == "target" else [""])] + [("bp", "", "conv")]
    rows = [{**dict.fromkeys(JOB_COLUMNS), "grid": "g", "job_id": f"j{i}", "rule": r, "schedule": s, "arch": a,
             "dataset": "mnist", "seed": 0, "status": "done", "epochs": 1, "planned_epochs": 1,
             "train_error": 1.0, "test_error": 2.0, "setting": ""}
            for i, (r, s, a) in enumerate(reversed(keys))]
    table = paper_table(pd.DataFrame(rows, columns=JOB_COLUMNS)).text
    assert list(table["method"]) == [method_of(*k) for k in sorted(keys, key=lambda k: method_rank(*k))]
    assert list(table["method"])[:2] == ["DTP, parallel", "DTP, alternating"]
    assert list(table["method"])[-2:] == ["BP", "BP ConvNet"]
    assert column_of("conv") == "LC"


@pytest.fixture
def toy_rule() -> Iterator[str]:
    """A rule registered from outside the catalog, as a new file or a plugin would."""
    @register_rule("toy", family="backward", params=BackwardParams, display="Toy", order=95,
                   summary="A test rule [with brackets].", source="this test")
    class Toy(BP):
        pass

    yield "toy"
    RULES.unregister("toy")


def test_a_new_registration_reaches_validate_list_and_report(toy_rule: str) -> None:
    job = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": toy_rule})
    assert job.rule.params == BackwardParams().model_dump()
    assert toy_rule in [r[0] for r in rows("rules")]
    assert method_of(toy_rule, "", "fc") == "Toy"
    assert method_rank("kp", "", "fc") < method_rank(toy_rule, "", "fc") < method_rank("bp", "", "fc")
    assert compat.archs_for_rule(RULES.get(toy_rule)) == compat.archs_for_rule(RULES.get("fa"))


def test_broken_registrations_are_refused_when_made() -> None:
    class Abstract(Rule):  # prepare and train_step not implemented
        pass

    with pytest.raises(TypeError, match="rule 'broken' is registered wrongly: Abstract does not implement"):
        register_rule("broken", family="backward", params=BackwardParams, display="X", order=1, summary="x")(Abstract)
    with pytest.raises(TypeError, match=r"must decorate a subclass of bioscale\.rules\.base\.Rule"):
        register_rule("broken", family="backward", params=BackwardParams, display="X", order=1, summary="x")(dict)
    with pytest.raises(TypeError, match=r"must take two arguments \(params, shape\)"):
        register_arch("broken", params=BackwardParams, display="X", order=1, layered=False,
                      summary="x")(lambda params: None)
    with pytest.raises(TypeError, match="params must be a pydantic model class"):
        register_arch("broken", params=dict, display="X", order=1, layered=False,  # type: ignore[arg-type]
                      summary="x")(lambda params, shape: None)
    assert "broken" not in RULES and "broken" not in ARCHS
