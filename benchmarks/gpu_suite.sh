#!/usr/bin/env bash
# The GPU suite of issue 13 in one run (benchmarks/gpu_suite.py says what each section measures):
#   every grids/table1.yaml cell's step and epoch time and peak memory (MNIST FC per rule, CIFAR LC bp/fa/dtp),
#   the ImageNet LC net at batch 128, ResNet-18 images/s (bp, ss, fa; bf16 + channels_last), eager vs CUDA
#   graphs, jobs packed per GPU, and the projected wall time of grids/table1.yaml on this GPU.
# Numbers with provenance go to results/gpu/<UTC time>-suite/suite.{json,md} (and to $OUT when set).
#
#   bash benchmarks/gpu_suite.sh                 # on a machine with a CUDA GPU: under 8 minutes (--budget S)
#   bash benchmarks/gpu_suite.sh --smoke         # on the CPU, tiny nets; CUDA-only parts skipped (a test runs it)
#
# The package runs from this checkout (PYTHONPATH=.). bioscale needs psutil, filelock and pebble beyond
# torch/torchvision/pydantic/typer/rich/pyyaml/pandas; on a machine without internet put their wheels in
# .whl/ (see README "Running on a cluster"): they are installed into /tmp/site first. PYTHON picks the
# interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
missing=$("$PYTHON" - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "torchvision", "pydantic", "typer", "rich", "yaml", "pandas", "psutil",
                            "filelock", "pebble") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_suite: missing Python packages: $missing. Install them, or put their wheels in .whl/ (README," \
       "'Running on a cluster')." >&2
  exit 2
fi
"$PYTHON" -c "import bioscale" || { echo "gpu_suite: cannot import bioscale from $(pwd)" >&2; exit 2; }
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
