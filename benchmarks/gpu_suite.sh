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
# .whl/ (see README "Running on a cluster"): gpu_env.sh installs them into /tmp/site first. PYTHON picks the
# interpreter (default python3).
NAME=gpu_suite
source "$(dirname "$0")/gpu_env.sh"
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
