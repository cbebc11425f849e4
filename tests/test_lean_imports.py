"""The heavy imports stay off the path of processes that do not train (issue 13, point 2): the CLI's reading
commands never import torch, so neither torch._dynamo (about 2 s on first use of an optimiser, 4 s with
torchvision) nor torch itself (about 2 s) is paid by `bioscale list`, `status` or `report`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMMANDS = [["--help"], ["status", "--help"], ["run", "--help"], ["list", "rules"], ["list", "archs"],
            ["list", "datasets"], ["grid", "validate", "grids/table1.yaml"],
            ["status", "--results", "results"], ["report", "--results", "results", "--grid", "table1-mnist5k"]]


def test_reading_commands_never_import_torch() -> None:
    code = f"""
import contextlib, io, sys
from bioscale import cli
failed = []
for args in {COMMANDS!r}:
    sys.argv = ["bioscale", *args]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main()
        except SystemExit as exc:
            if exc.code:
                failed.append((args, exc.code))
assert not failed, failed
heavy = sorted(m for m in ("torch", "torch._dynamo", "torch.optim", "torchvision") if m in sys.modules)
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
