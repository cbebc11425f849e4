"""The command line end to end, as a user runs it: a fresh process, exit codes, no tracebacks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def bioscale(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "bioscale", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_run_then_report_then_rerun_does_nothing(tmp_path: Path, tiny_grid: dict) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid))
    results = tmp_path / "results"
    first = bioscale("run", str(grid), "--results", str(results), "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr
    assert "4 to run" in first.stderr and "finished: 4 done" in first.stderr
    again = bioscale("run", str(grid), "--results", str(results), "--set", "train.epochs=1")
    assert again.returncode == 0 and "4 already finished, 0 to run" in again.stderr

    rows = json.loads(bioscale("report", "--results", str(results), "--format", "json").stdout)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert {r["rule"] for r in rows} == {"bp", "fa"}
    md = bioscale("report", "--results", str(results), "--grid", "tiny", "--format", "markdown")
    assert md.returncode == 0 and md.stdout.startswith("| rule")
    out = tmp_path / "r.csv"
    assert bioscale("report", "--results", str(results), "--format", "csv", "--output", str(out)).returncode == 0
    assert len(out.read_text().splitlines()) == 5


def test_bad_input_is_one_paragraph_and_nonzero(tmp_path: Path, tiny_grid: dict) -> None:
    tiny_grid["axes"]["rule.name"] = ["bp", "feedback-alignment"]
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid))
    results = tmp_path / "results"
    for args in (["run", str(grid), "--results", str(results)], ["grid", "validate", str(grid)]):
        proc = bioscale(*args)
        assert proc.returncode == 2
        assert "Unknown rule 'feedback-alignment'" in proc.stderr and "Traceback" not in proc.stderr
    assert not results.exists()  # nothing started on an invalid grid
    usage = bioscale("run", "grids/smoke.yaml", "--no-such-option")
    assert usage.returncode == 2 and "No such option" in usage.stderr and "Traceback" not in usage.stderr
    assert bioscale("report", "--format", "pdf").returncode == 2
    missing = bioscale("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    report = bioscale("report", "--results", str(results), "--grid", "nope")
    assert report.returncode == 2 and "No results for grid 'nope'" in report.stderr
    refused = bioscale("run", "grids/table2.yaml", "--results", str(results), "-q")  # no ImageNet here
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.count("imagenet: no dataset.params.root") == 1 and "[all 6 jobs]" in refused.stderr
    assert not results.exists()  # preflight: nothing started, nothing written
    empty = tmp_path / "imagenet"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()  # passes preflight (folders are not scanned), fails when a job loads it
    failing = bioscale("run", "grids/table2.yaml", "--results", str(results), "-q", "--set",
                       f"dataset.params.root={empty}")
    assert failing.returncode == 1 and "6 job(s) failed" in failing.stderr and "DataError" in failing.stderr
    assert "Traceback" not in failing.stderr
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    proc = bioscale("run", "grids/smoke.yaml", "--results", str(a_file))
    assert proc.returncode == 2 and "Not a directory" in proc.stderr and "Traceback" not in proc.stderr
    assert a_file.read_text() == "not a folder"


def test_preflight_and_bad_input_exit_2_with_one_message(tmp_path: Path, tiny_grid: dict) -> None:
    """Issue 11, points 5 and 8, as a user meets them: exit 2, the key and what is allowed, nothing written."""
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid))
    results = tmp_path / "results"

    def refused(*args: str) -> str:
        proc = bioscale(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ")
        return proc.stderr

    no_gpu = refused("run", str(grid), "--results", str(results), "--set", "train.device=cuda:9")
    assert "preflight found 1 problem; nothing was started" in no_gpu and "train.device='cuda:9'" in no_gpu
    assert "[all 4 jobs]" in no_gpu and not results.exists()
    too_many = refused("run", str(grid), "--results", str(results), "--max-jobs", "3")
    assert "the axes make 4 combinations" in too_many and "--max-jobs 4" in too_many and not results.exists()
    assert bioscale("grid", "validate", str(grid), "--max-jobs", "4").returncode == 0
    bad_set = refused("grid", "validate", str(grid), "--set", "optim.betas=[0.9,")
    assert "--set 'optim.betas=[0.9,': the value is not valid YAML" in bad_set and bad_set.count("\n") == 1
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"PK\x03\x04\x00\x00\x08\x00")
    assert "is a binary file, not a grid" in refused("run", str(binary), "--results", str(results))
    a_file = tmp_path / "results.csv"
    a_file.write_text("grid,job_id\n")
    assert f"--results {a_file} is a file" in refused("report", "--results", str(a_file))


def test_grid_validate_expand_and_list(tmp_path: Path) -> None:
    proc = bioscale("grid", "validate", "grids/smoke.yaml")
    assert proc.returncode == 0 and "valid, 4 jobs" in proc.stdout
    lines = bioscale("grid", "expand", "grids/smoke.yaml", "--json").stdout.splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["spec"]["rule"]["name"] == "bp"
    for what, name in (("rules", "aosdtp"), ("archs", "resnet18"), ("datasets", "mnist-5k")):
        proc = bioscale("list", what)
        assert proc.returncode == 0 and name in proc.stdout


def test_arch_summary() -> None:
    proc = bioscale("arch", "summary", "lc", "--dataset", "imagenet", "--batch-size", "128")
    assert proc.returncode == 0, proc.stderr
    assert "259,859,368" in proc.stdout and "LocallyConnected2d" in proc.stdout and "total" in proc.stdout
    proc = bioscale("arch", "summary", "fc", "--dataset", "digits", "--param", "hidden=[100]")
    assert proc.returncode == 0 and "7,510" in proc.stdout
    bad = bioscale("arch", "summary", "lcc")
    assert bad.returncode == 2 and "Did you mean 'lc'" in bad.stderr
    proc = bioscale("arch", "summary", "fc", "--rule", "fa", "--stack", "4")
    assert proc.returncode == 0, proc.stderr
    assert "memory of a stack of 4 fa jobs on a GPU, batch 128 each" in proc.stdout and "4 jobs alone" in proc.stdout
    proc = bioscale("arch", "summary", "fc", "--rule", "fa", "--device", "cpu")
    assert proc.returncode == 0 and "memory of one fa job on the CPU" in proc.stdout
    bad = bioscale("arch", "summary", "fc", "--rule", "fa", "--device", "tpu")
    assert bad.returncode == 2 and "'cpu' or a 'cuda' device" in bad.stderr and "Traceback" not in bad.stderr
    bad = bioscale("arch", "summary", "resnet18", "--dataset", "cifar10", "--stack", "2")
    assert bad.returncode == 2 and "cannot be stacked" in bad.stderr and "Traceback" not in bad.stderr


def test_user_text_in_square_brackets_is_printed(tmp_path: Path) -> None:
    """Error messages go through rich markup: "[draft]" must not vanish, "[/train]" must not crash."""
    missing = bioscale("run", str(tmp_path / "[draft] grid.yaml"))
    assert missing.returncode == 2 and "[draft] grid.yaml" in missing.stderr
    for key in ("[train]", "[/train]"):
        proc = bioscale("grid", "validate", "grids/smoke.yaml", "--set", f"{key}.epochs=2")
        assert proc.returncode == 2 and f"unknown key '{key}'" in proc.stderr and "Traceback" not in proc.stderr


PLUGIN = '''
from bioscale.catalog import DATASETS, register_dataset

SYNTHETIC = DATASETS.get("synthetic")


@register_dataset("plugin-synthetic", params=SYNTHETIC.params, summary="synthetic data, from a plugin",
                  family=SYNTHETIC.family, order=1000, input_shape=SYNTHETIC.input_shape,
                  num_classes=SYNTHETIC.num_classes, tags=("tests-only",))
def load(params, settings):
    return SYNTHETIC.impl(params, settings)
'''


def test_plugin_registers_a_component_for_the_command_and_its_workers(tmp_path: Path, tiny_grid: dict) -> None:
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN)
    tiny_grid["base"]["dataset"]["name"] = "plugin-synthetic"
    tiny_grid["axes"] = {"seed": [0]}
    grid = tmp_path / "plugged.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid))
    without = bioscale("grid", "validate", str(grid))
    assert without.returncode == 2 and "plugin-synthetic" in without.stderr
    results = tmp_path / "results"
    # local executor: the worker process must load the plugin too, or it does not know the dataset
    proc = bioscale("--plugin", str(plugin), "run", str(grid), "--results", str(results), "--set",
                    "train.epochs=1", "--executor", "local", "--workers", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "finished: 1 done" in proc.stderr
    broken = bioscale("--plugin", str(tmp_path / "nope.py"), "grid", "validate", str(grid))
    assert broken.returncode == 2 and "nope.py" in broken.stderr and "Traceback" not in broken.stderr


def test_validate_refuses_what_cannot_start_naming_the_job_and_what_would_work(tmp_path: Path,
                                                                               tiny_grid: dict) -> None:
    """`grid validate` "valid" means the jobs can start: an arch without a preset for the dataset's shape
    and a rule on an arch it cannot run are exit 2, naming the job and the alternatives."""
    tiny_grid["axes"] = {"arch": ["fc", "lc"], "dataset": ["imagenet"]}
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid))
    proc = bioscale("grid", "validate", str(grid), "--set", "arch.params={}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "(arch=fc, dataset=imagenet): arch 'fc' has no preset for imagenet-shaped data" in proc.stderr
    assert "What would work: archs that run 'bp' on 'imagenet': lc, conv, resnet18, alexnet" in proc.stderr
    tiny_grid["axes"] = {"rule.name": ["dfa"], "arch": ["alexnet"]}
    grid.write_text(yaml.safe_dump(tiny_grid))
    proc = bioscale("grid", "validate", str(grid), "--set", "arch.params={}")
    assert proc.returncode == 2 and "rule 'dfa' needs a layered" in proc.stderr
    assert "archs that run 'dfa' on 'synthetic': fc, lc, conv" in proc.stderr


def test_version_and_short_help() -> None:
    version = bioscale("--version")
    assert version.returncode == 0 and version.stdout.startswith("bioscale 0.") and "torch" in version.stdout
    for args in (["-h"], ["run", "-h"], ["grid", "validate", "-h"], ["arch", "summary", "-h"]):
        shown = bioscale(*args)
        assert shown.returncode == 0 and "Usage:" in shown.stdout and "Traceback" not in shown.stderr, args
