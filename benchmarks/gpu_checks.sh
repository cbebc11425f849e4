#!/usr/bin/env bash
# The GPU checks of issue 12 in one run (benchmarks/gpu_checks.py says what each check does):
#   1-rank NCCL DDP job (with and without GlobalBatchNorm) == one process; the local executor packing
#   4 jobs per GPU; AMP; ImageFolder batches as uint8 to the GPU == ToTensor + Normalize.
# Numbers with provenance go to results/gpu/<UTC time>/checks.{json,md} (and to $OUT when set).
#
#   bash benchmarks/gpu_checks.sh            # on a machine with a CUDA GPU: about 3-4 minutes on an H200
#   bash benchmarks/gpu_checks.sh --smoke    # on the CPU, small; CUDA-only parts are skipped (a test runs it)
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
  echo "gpu_checks: missing Python packages: $missing. Install them, or put their wheels in .whl/ (README," \
       "'Running on a cluster')." >&2
  exit 2
fi
"$PYTHON" -c "import bioscale" || { echo "gpu_checks: cannot import bioscale from $(pwd)" >&2; exit 2; }
exec "$PYTHON" benchmarks/gpu_checks.py "$@"
