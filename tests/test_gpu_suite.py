"""benchmarks/gpu_suite.sh --smoke: the GPU suite runs end to end on the CPU (every table1 cell built and
stepped, the ImageNet LC net, ResNet-18 with bf16 + channels_last, packed processes, the projection), skips
the CUDA-only part saying so, measures stacked against solo runs, and records provenance (issue 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))


def test_longest_first_schedule() -> None:
    from gpu_suite import schedule

    assert schedule([3.0, 1.0, 1.0, 1.0], 1) == 6.0
    assert schedule([3.0, 2.0, 2.0, 1.0], 2) == 4.0  # 3+1 | 2+2
    assert schedule([5.0, 1.0], 4) == 5.0  # the longest job bounds it


def test_projection_stretches_cells_by_the_packing_factor_and_judges_the_goals() -> None:
    """Two FC cells of 2 h and one LC cell of 3 h: one slot takes 7 h; four slots where 4 FC jobs together run
    3.2x as fast as one (each at 4/3.2 = 1.25x its solo time) and LC jobs 2x (each 2x): max(2.5, 2.5, 6)."""
    from types import SimpleNamespace

    from gpu_suite import goals, run_projection

    cells = [{"arch": "fc", "cell_hours": 2.0}, {"arch": "fc", "cell_hours": 2.0}, {"arch": "lc", "cell_hours": 3.0}]
    results = {"table1": {"cells": cells}, "packing": {"slots": [1, 4], "fc": {"speedup": {1: 1.0, 4: 3.2}},
                                                        "lc": {"speedup": {1: 1.0, 4: 2.0}}}}
    projection = run_projection(SimpleNamespace(results=results))  # type: ignore[arg-type]
    assert projection["jobs_per_gpu_1"]["hours"] == 7.0 and projection["jobs_per_gpu_4"]["hours"] == 6.0
    assert projection["best_hours"] == 6.0 and projection["stacked"] == "table1 has no stackable jobs"
    results["projection"] = projection
    results["resnet18"] = {"ratio_to_bp": {"ss": 0.97, "fa": 0.9}}
    results["imagenet_lc"] = {"bp": {"peak_gib": 20.1, "fits_16gb": False}}
    assert [(name.split()[1], ok) for name, ok, _ in goals(results)] == [
        ("ss", True), ("fa", False), ("LC", False), ("in", False)]


@pytest.mark.slow
def test_gpu_suite_smoke_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "suite.json").read_text())
    r = report["results"]
    assert report["smoke"] and report["provenance"]["torch"] and report["provenance"]["load_average"]
    assert r["compile"] == {"status": "skipped", "why": "--smoke: CUDA-only, skipped"}
    cells = r["table1"]["cells"]
    assert r["table1"]["status"] == "ok" and not r["table1"]["problems"] and len(cells) == 38
    alternating = next(c for c in cells if c["rule"] == "dtp" and c["schedule"] == "alternating")
    assert set(alternating["step_ms"]) == {"inverse", "forward"}
    assert all(c["epoch_s"] >= c["epoch_train_s"] > 0 and c["eval_ms"] > 0 for c in cells)  # evaluation counts
    assert r["imagenet_lc"]["bp"]["step_ms"] > 0
    runs = r["resnet18"]["runs"]
    assert {(x["rule"], x["amp"], x["channels_last"]) for x in runs} >= {("ss", "bf16", True), ("fa", "bf16", True)}
    assert r["packing"]["fc"]["speedup"]["1"] == 1.0 and r["packing"]["fc"]["steps_per_s"]["2"] > 0
    projection = r["projection"]
    one = projection["jobs_per_gpu_1"]
    assert one["hours"] == pytest.approx(sum(c["cell_hours"] for c in cells), rel=1e-3, abs=0.02)
    stacked = r["stacked"]
    assert stacked["members"] == 4 and set(stacked["rules"]) == {"bp", "fa", "dtp"}
    assert all(v["stacked_step_ms"] > 0 and v["throughput_x"] > 0 for v in stacked["rules"].values())
    assert "stacked runs, M = 4 MNIST FC jobs as one model vs solo: bp " in proc.stdout
    assert "MNIST FC epoch bp:" in proc.stdout
    assert (out / "suite.md").read_text().startswith("# bioscale GPU suite (smoke, CPU)")
    assert (tmp_path / "suite.json").is_file() and (tmp_path / "suite.md").is_file()  # copied to $OUT
    assert not any(p.name.startswith("barrier") for p in out.iterdir())
