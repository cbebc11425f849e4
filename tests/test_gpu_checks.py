"""benchmarks/gpu_checks.sh --smoke: the GPU checks' script runs on the CPU (gloo, CPU slots, CPU device),
skips the CUDA-only part saying so, and records its numbers with provenance (issue 12, point 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_checks_smoke_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_checks.sh"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "checks.json").read_text())
    checks = report["checks"]
    assert report["smoke"] and report["provenance"]["torch"] and report["provenance"]["load_average"]
    assert checks["amp"] == {"status": "skipped", "why": "--smoke: CUDA-only, skipped"}
    assert "[amp] --smoke: CUDA-only, skipped" in proc.stdout
    ddp = checks["ddp"]
    assert ddp["status"] == "ok" and ddp["ddp"]["device"] == "cpu (rank 0 of 1, gloo)"
    assert ddp["ddp"]["max_loss_diff_vs_single"] <= 1e-4 and ddp["global_bn"]["max_loss_diff_vs_single"] <= 1e-4
    packed = checks["packed"]["cpu_workers_2"]
    assert checks["packed"]["status"] == "ok" and packed["done"] == packed["jobs"] == 4
    image = checks["imagefolder"]
    assert image["status"] == "ok" and image["max_diff_vs_cpu_float"] <= 1e-5 and image["epoch1_images_per_s"] > 0
    assert (out / "checks.md").read_text().startswith("# bioscale GPU checks (smoke, CPU)")
    assert (tmp_path / "checks.json").is_file() and (tmp_path / "commands.log").is_file()  # copied to $OUT
    assert not (out / "ddp").exists()  # numbers kept, data and checkpoints not
