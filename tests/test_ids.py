"""Job ids survive upgrades (issue 11, point 10): a parameter added with a default that reproduces the old
behaviour leaves every existing id valid, and a changed default never lets old and new results share an id."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError, create_model

import bioscale.spec
from bioscale import ids
from bioscale.catalog import RULES
from bioscale.grid import expand, load_grid, resolve
from bioscale.ids import added, fill_baselines
from bioscale.spec import JobSpec, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
GRIDS = sorted((ROOT / "grids").glob("*.yaml"))
RESULTS = ROOT / "results"
PATCHED = ("fa", "ss", "dtp")
Init = Literal["xavier", "he-fanout", "xiao"]

# sha256 of the sorted "<grid>/<job id>" lines of every job of grids/*.yaml, before ids.py existed. If a grid
# file changes on purpose, recompute it; if it changes because of code, existing results were orphaned.
# Recomputed once on purpose: issue 16 made DTP's alpha_convention batch_mean by default, which gives the 10
# DTP jobs of table1 and table2 (never run) new ids; table1-mnist5k pins per_example and keeps its results'.
PINNED_GRID_IDS = "de8ad13913329e22c08adfccd8954fe7ad539f433aa1e1b7d370fd0385366fab"


def _grid_jobs() -> dict[tuple[str, str], Any]:
    """(grid file, axis label) -> Job, for every job of every grid."""
    return {(path.stem, job.label): job for path in GRIDS for job in expand(load_grid(path))}


def _ids(jobs: dict[tuple[str, str], Any]) -> dict[tuple[str, str], str]:
    return {key: job.job_id for key, job in jobs.items()}


def _patch(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...] = PATCHED, **fields: Any) -> None:
    """Give rules ``names`` a params model with ``fields`` added (pydantic ``create_model`` syntax), as if a
    release had added them; monkeypatch puts the records back after the test."""
    RULES.names()  # discover the built-ins first, so discovery cannot overwrite the patch
    for name in names:
        record = RULES.get(name)
        params = create_model(f"{record.params.__name__}Upgraded", __base__=record.params, **fields)
        monkeypatch.setitem(RULES._entries, name, dataclasses.replace(record, params=params))


def _job(rule: str = "fa", **params: Any) -> JobSpec:
    return resolve({"dataset": "mnist-5k", "arch": "fc", "rule": {"name": rule, "params": params}})


# ---- today's ids ---------------------------------------------------------------------------------------


PINNED_GRIDS = ("smoke", "table1", "table1-mnist5k", "table2", "xiao2018")
"""The grids PINNED_GRID_IDS covers; later grids are pinned separately (their jobs are new, not changed)."""
PINNED_DETECTION_IDS = "83ed4b473a26fdd878a67b476504c677f91a48992a608d3c9f41310d48cbd739"
"""The same for the detection grids (issue 14), with ss at its default scale, Xiao et al.'s (issue 16), and
xiao2018-coco on torchvision's schedule (multistep 16/22, 1000-step warm-up; never run before the change)."""


@pytest.mark.parametrize(("names", "pinned"), [(PINNED_GRIDS, PINNED_GRID_IDS),
                                               (("detection-smoke", "xiao2018-coco"), PINNED_DETECTION_IDS)])
def test_todays_ids_are_unchanged(names: tuple[str, ...], pinned: str) -> None:
    lines = sorted(f"{path.stem}/{job.job_id}" for path in GRIDS if path.stem in names
                   for job in expand(load_grid(path)))
    assert {path.stem for path in GRIDS} >= set(names)
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == pinned


@pytest.mark.skipif(not (RESULTS / "table1-mnist5k").is_dir(), reason="no committed results beside this checkout")
def test_committed_results_keep_their_ids() -> None:
    stored = sorted(RESULTS.glob("*/*/spec.json"))
    assert stored
    for path in stored:
        data = json.loads(path.read_text())
        assert JobSpec.model_validate(data["spec"]).job_id() == data["job_id"] == path.parent.name
    grid = {job.job_id for job in expand(load_grid(ROOT / "grids" / "table1-mnist5k.yaml"))}
    assert grid == {p.parent.name for p in (RESULTS / "table1-mnist5k").glob("*/spec.json")}


# ---- (1) adding a parameter with added(...) ---------------------------------------------------------------


def test_adding_a_parameter_keeps_the_paper_grids_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _ids(_grid_jobs())
    _patch(monkeypatch, extra_knob=(float, added(0.0, since="0.2")))
    after = _grid_jobs()
    assert _ids(after) == before
    patched = [job for job in after.values() if job.spec.rule.name in PATCHED]
    assert len(patched) > 20
    # the new parameter is resolved into every spec (so spec.json records it), it just is not hashed
    assert all(job.spec.rule.params["extra_knob"] == 0.0 for job in patched)


def test_without_a_baseline_a_new_parameter_would_move_the_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure this module prevents: a plain new field re-keys every job of its rule."""
    before = _ids(_grid_jobs())
    _patch(monkeypatch, extra_knob=(float, 0.0))
    after = _grid_jobs()
    moved = {key for key in before if before[key] != after[key].job_id}
    assert moved == {key for key, job in after.items() if job.spec.rule.name in PATCHED}
    assert any("extra_knob" in p for p in ids.problems())


# ---- (2) a non-baseline value ------------------------------------------------------------------------------


def test_a_non_baseline_value_gets_a_new_id(monkeypatch: pytest.MonkeyPatch) -> None:
    old = _job().job_id()
    _patch(monkeypatch, extra_knob=(float, added(0.0)))
    assert _job().job_id() == old
    assert _job(extra_knob=0.0).job_id() == _job(extra_knob=0).job_id() == old
    assert _job(extra_knob=0.5).job_id() != old
    assert _job(extra_knob=0.5).job_id() != _job(extra_knob=0.25).job_id()


def test_a_bool_baseline_is_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    old = _job().job_id()
    _patch(monkeypatch, flag=(bool | int, added(False)))
    assert _job().job_id() == _job(flag=False).job_id() == old
    assert _job(flag=0).job_id() != old


# ---- (3) changing the default of an added field ----------------------------------------------------------


def test_changing_an_added_default_gives_new_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _ids(_grid_jobs())
    old = _job().job_id()
    _patch(monkeypatch, extra_knob=(float, added(1.0, baseline=0.0)))
    after = _grid_jobs()
    for key, job in after.items():
        assert (job.job_id != before[key]) == (job.spec.rule.name in PATCHED), key
    assert _job().job_id() != old
    assert _job(extra_knob=0.0).job_id() == old  # asking for the old behaviour finds the old results


# ---- (4) changing the default of a frozen field ------------------------------------------------------------


def test_changing_a_frozen_default_gives_new_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _grid_jobs()
    _patch(monkeypatch, ("fa", "ss"), feedback_init=(Init, "xiao"))
    after = _grid_jobs()
    changed = kept = 0
    for key, job in after.items():
        old = before[key].spec.rule.params.get("feedback_init")
        new = job.spec.rule.params.get("feedback_init")
        assert (job.job_id != before[key].job_id) == (old != new), key
        changed += old != new
        kept += job.spec.rule.name in ("fa", "ss") and old == new  # xiao2018 sets feedback_init: xiao itself
    assert changed >= 9 and kept > 0


def test_a_frozen_field_is_hashed_even_if_marked_added(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _ids(_grid_jobs())
    _patch(monkeypatch, ("fa",), feedback_init=(Init, added("xavier")))
    assert _ids(_grid_jobs()) == before  # dropping it would re-key every fa job that has the default
    assert "feedback_init" in ids.id_payload(_job())["rule"]["params"]
    assert any("rule:fa feedback_init" in p and "remove its added" in p for p in ids.problems())


# ---- job-level fields ------------------------------------------------------------------------------------


class TrainWithClip(TrainSpec):
    grad_clip: float | None = added(None, since="0.2")


class JobWithClip(JobSpec):
    train: TrainWithClip = Field(default_factory=TrainWithClip)


class TrainWithNewDefault(TrainSpec):
    grad_clip: float = added(1.0, baseline=0.0)


class JobWithNewDefault(JobSpec):
    train: TrainWithNewDefault = Field(default_factory=TrainWithNewDefault)


def test_job_level_added_fields_follow_the_same_rule() -> None:
    spec = _job()
    dump = spec.model_dump(mode="json")
    assert JobWithClip.model_validate(dump).job_id() == spec.job_id()
    clipped = JobWithClip.model_validate({**dump, "train": {**dump["train"], "grad_clip": 5.0}})
    assert clipped.job_id() != spec.job_id()
    assert JobWithNewDefault.model_validate(dump).job_id() != spec.job_id()
    assert JobWithNewDefault.model_validate({**dump, "train": {**dump["train"], "grad_clip": 0}}).job_id() == \
        spec.job_id()


# ---- (5) every field is frozen or declares a baseline ------------------------------------------------------


def test_every_builtin_field_is_frozen_or_declares_a_baseline() -> None:
    assert ids.problems() == []


def test_the_check_names_a_field_added_without_a_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(monkeypatch, ("dtp",), extra_knob=(float, 0.0))
    found = ids.problems()
    assert len(found) == 1 and found[0].startswith("rule:dtp extra_knob:") and "added(" in found[0]


def test_the_check_covers_the_job_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    train = create_model("TrainWithThreads", __base__=TrainSpec, threads=(int, 1))
    job = create_model("JobWithThreads", __base__=JobSpec, train=(train, Field(default_factory=train)))
    monkeypatch.setattr(bioscale.spec, "JobSpec", job)
    found = ids.problems()
    assert len(found) == 1 and found[0].startswith("job train.threads:")


def test_the_check_wants_new_components_frozen_and_baselines_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    table = json.loads(json.dumps(ids.load_table()))
    del table["fields"]["rule:kp"]
    assert any(p.startswith("rule:kp: not in") for p in ids.problems(table))
    _patch(monkeypatch, ("fa",), extra_knob=(float, added(0.0)))
    assert any(p.startswith("rule:fa extra_knob:") and "not recorded" in p for p in ids.problems())


def test_freeze_appends_and_never_changes_a_baseline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    frozen = tmp_path / ids.ID_FIELDS_FILE
    shutil.copy(ids._default_file(), frozen)
    original = json.loads(frozen.read_text())
    with monkeypatch.context() as m:
        _patch(m, extra_knob=(float, added(0.0)))
        assert ids.freeze(frozen) == []
    table = json.loads(frozen.read_text())
    assert table["fields"] == original["fields"]
    expected = json.loads(json.dumps(original["baselines"]))  # a deep copy: patched rules may have baselines
    for name in PATCHED:
        expected.setdefault(f"rule:{name}", {})["extra_knob"] = 0.0
    assert table["baselines"] == expected
    with monkeypatch.context() as m:  # a later release changes the default and, wrongly, the baseline with it
        _patch(m, extra_knob=(float, added(1.0)))
        found = ids.freeze(frozen)
        assert len(found) == 3 and all("baseline changed from 0.0 to 1.0" in p for p in found)
        _patch(m, ("fa",), other=(int, 3))  # a plain new field is never frozen by the tool
        assert any(p.startswith("rule:fa other:") for p in ids.freeze(frozen))
    assert json.loads(frozen.read_text()) == table
    ids.load_table.cache_clear()


def test_the_frozen_file_is_package_data() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert ids.ID_FIELDS_FILE in text[text.index("[tool.setuptools.package-data]"):]


# ---- (6) reading old results -------------------------------------------------------------------------------


def test_fill_baselines_gives_old_results_the_values_they_were_computed_under(
        monkeypatch: pytest.MonkeyPatch) -> None:
    old = _job()
    stored = old.model_dump(mode="json")  # a spec.json written before the field existed
    _patch(monkeypatch, extra_knob=(float, added(1.0, baseline=0.0)))
    assert JobSpec.model_validate(stored).job_id() == old.job_id()
    filled = fill_baselines(stored)
    assert filled["rule"]["params"]["extra_knob"] == 0.0 and "extra_knob" not in stored["rule"]["params"]
    assert JobSpec.model_validate(filled).job_id() == old.job_id()
    assert fill_baselines(JobSpec.model_validate(stored)).rule.params["extra_knob"] == 0.0
    new = _job()  # resolved today: the new default, hashed, so it is a different job with its own results
    assert new.rule.params["extra_knob"] == 1.0 and new.job_id() != old.job_id()
    assert fill_baselines(new.model_dump(mode="json")) == new.model_dump(mode="json")  # present values stay


def test_fill_baselines_for_job_level_fields_and_unknown_components() -> None:
    stored = _job().model_dump(mode="json")
    assert JobWithNewDefault.model_validate(stored).train.grad_clip == 1.0  # today's default: wrong for it
    filled = fill_baselines(stored, JobWithNewDefault)
    assert JobWithNewDefault.model_validate(filled).train.grad_clip == 0.0
    assert fill_baselines(stored) == stored  # nothing added in today's schema
    plugin = {**stored, "rule": {"name": "not-loaded-plugin", "params": {"x": 1}}}
    assert fill_baselines(plugin) == plugin
    # shorthand, read as the schema reads it; fa's feedback_dist (added in issue 16) gets its baseline
    assert fill_baselines({"dataset": "mnist-5k", "arch": "fc", "rule": "fa"})["rule"] == {
        "name": "fa", "params": {"feedback_dist": "normal"}}
    assert fill_baselines({"dataset": "mnist-5k", "arch": "fc", "rule": "bp"})["rule"] == {"name": "bp",
                                                                                            "params": {}}


# ---- the helper ------------------------------------------------------------------------------------------


def test_added_is_a_field_with_its_baseline_in_the_schema() -> None:
    class Params(BaseModel):
        knob: float = added(0.5, since="0.2", ge=0.0, description="a knob")
        shape: tuple[int, int] = added((1, 2))
        items: list[int] = added(default_factory=list)

    field = Params.model_fields["knob"]
    assert field.json_schema_extra == {"added_in": "0.2", "id_baseline": 0.5} and field.description == "a knob"
    with pytest.raises(ValidationError):
        Params(knob=-1.0)
    assert ids.declared_baseline(Params, "shape") == (True, [1, 2])
    assert ids.declared_baseline(Params, "items") == (True, [])
    assert Params.model_json_schema()["properties"]["knob"]["id_baseline"] == 0.5
    with pytest.raises(TypeError, match="needs a default"):
        added()
