"""Trainer overhead: an epoch of the paper's MNIST FC net on mnist-5k through bioscale's trainer (the code
path of `bioscale run`) against a bare hand-written PyTorch loop over the same tensors, same batch size and
optimiser. Prints a table of median epoch times and their ratio (goal: trainer/bare <= 1.15).

    python benchmarks/bench_trainer.py [--epochs 5] [--batch-size 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

from bioscale.data import LoaderSettings, load_data
from bioscale.grid import resolve
from bioscale.job import Job
from bioscale.models import build_model
from bioscale.spec import DatasetSpec
from bioscale.store import Store
from bioscale.train import run_job


def bare_loop(epochs: int, batch_size: int) -> list[float]:
    """The loop a researcher would write by hand: same tensors, same net, same Adam."""
    torch.manual_seed(0)
    data = load_data(DatasetSpec(name="mnist-5k"), LoaderSettings(batch_size, 1000, torch.device("cpu"), 0))
    x, y = data.train.x, data.train.y  # the device-resident tensors
    spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": "bp"})
    model = build_model(spec.arch, data.info)
    opt = torch.optim.Adam(model.parameters(), lr=1.52e-4, betas=(0.9, 0.999), eps=1e-8)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def trainer(epochs: int, batch_size: int) -> tuple[list[float], float]:
    spec = resolve({"dataset": "mnist-5k", "arch": "fc", "rule": "bp",
                    "optim": {"lr": 1.52e-4, "betas": [0.9, 0.999], "eps": 1e-8},
                    "train": {"epochs": epochs, "batch_size": batch_size, "diagnostics_every": 0}})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_job(Job("bench", spec, "bench"), Store(tmp))
        wall = time.perf_counter() - t0
        assert result.status == "done", result.error
        rows = Store(tmp).job_dir("bench", spec.job_id()).read_metrics()
    return [r.epoch_time_s for r in rows], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved (bare, trainer) rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bare_loop(1, args.batch_size)  # warm-up: allocator, kernels
    bares, ours, ratios, walls = [], [], [], []
    for _ in range(args.rounds):  # interleaved, so machine load drifts hit both alike
        b = statistics.median(bare_loop(args.epochs, args.batch_size))
        times, wall = trainer(args.epochs, args.batch_size)
        o = statistics.median(times)
        bares.append(b)
        ours.append(o)
        ratios.append(o / b)
        walls.append(wall)
    print(f"MNIST FC net (784-256x5-10, tanh), mnist-5k (4,000 train), batch {args.batch_size}, "
          f"{args.epochs} epochs x {args.rounds} interleaved rounds, {args.threads} thread(s)")
    print(f"{'loop':<28}{'median s/epoch':>16}{'ratio':>8}")
    print(f"{'bare PyTorch loop':<28}{statistics.median(bares):>16.4f}{1.0:>8.2f}")
    print(f"{'bioscale trainer':<28}{statistics.median(ours):>16.4f}{statistics.median(ratios):>8.2f}")
    print(f"(ratio: median of per-round ratios, range {min(ratios):.2f}-{max(ratios):.2f}; a whole bioscale "
          f"job incl. data load, evaluation and checkpoints: {statistics.median(walls):.2f} s)")


if __name__ == "__main__":
    main()
