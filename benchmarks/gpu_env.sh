# Sourced by gpu_checks.sh and gpu_suite.sh with NAME set: run from the repository root, install the wheels in
# .whl/ (a machine without internet) into /tmp/site, put this checkout on PYTHONPATH, and stop with exit 2 and
# one line when a package bioscale needs is missing. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
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
  echo "$NAME: missing Python packages: $missing. Install them, or put their wheels in .whl/ (README," \
       "'Running on a cluster')." >&2
  exit 2
fi
"$PYTHON" -c "import bioscale" || { echo "$NAME: cannot import bioscale from $(pwd)" >&2; exit 2; }
