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
# .whl/ (see README "Running on a cluster"): gpu_env.sh installs them into /tmp/site first. PYTHON picks the
# interpreter (default python3).
NAME=gpu_checks
source "$(dirname "$0")/gpu_env.sh"
exec "$PYTHON" benchmarks/gpu_checks.py "$@"
