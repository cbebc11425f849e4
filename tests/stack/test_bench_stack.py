"""benchmarks/bench_stack.py --smoke runs end to end on the CPU and prints one row per rule and stack size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_stack_smoke() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_stack.py"), "--smoke", "--members", "1,2",
                           "--rules", "bp,dtp"], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["bp"], ["dtp"])]
    assert [(r[0], r[1]) for r in rows] == [("bp", "1"), ("bp", "2"), ("dtp", "1"), ("dtp", "2")]
    assert all(float(r[-1]) > 0 for r in rows)
