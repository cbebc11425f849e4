"""Stacked vs solo throughput on the MNIST FC net (Table 3: 784-256x5-10, tanh), one thread, one process.

    python benchmarks/bench_stack.py [--members 1,4,16] [--rules bp,fa,dtp] [--rounds R] [--batch 128]
        [--device cpu|cuda] [--smoke]

For each rule and stack size M: the time of one stacked step (``bioscale.stack.Stack.step`` on M batches)
against M solo steps (``rule.train_step`` of the same jobs, one after the other, as M separate jobs would
take them). Timed in short interleaved rounds (solo and stacked alternate, so load from other processes hits
both alike); the ratio is the median over rounds of (M solo steps) / (one stacked step): above 1, the stack
trains more examples per second. Members differ in seed and lr (Adam). ``--smoke`` is a tiny net and a few
rounds, to check the script end to end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bioscale.data.base import DataShape
from bioscale.spec import JobSpec
from bioscale.stack import Stack, build_member

MNIST = DataShape("mnist", (1, 28, 28), 10, 60000, 10000)
CIFAR = DataShape("cifar10", (3, 32, 32), 10, 50000, 10000)
SMOKE = DataShape("mnist", (1, 4, 4), 3, 64, 64)


def job(rule: str, seed: int, hidden: list[int] | None, batch: int, device: str, arch: str = "fc") -> JobSpec:
    params = {"hidden": hidden} if arch == "fc" else {}
    return JobSpec.model_validate({
        "dataset": {"name": "mnist"}, "arch": {"name": arch, "params": params},
        "rule": {"name": rule}, "optim": {"lr": 1e-4 * (1 + seed)}, "seed": seed,
        "train": {"batch_size": batch, "device": device}})


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench(rule: str, m: int, info: DataShape, hidden: list[int] | None, batch: int, rounds: int, steps: int,
          device: str, arch: str = "fc") -> tuple[float, float]:
    """(median seconds per solo step, median ratio of M solo steps to one stacked step)."""
    specs = [job(rule, s, hidden, batch, device, arch) for s in range(m)]
    solo = build_member(specs[0], info, device)
    solo.rule.begin_epoch(0)
    stack = Stack.build(specs, info, device)
    stack.begin_epoch(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(m, batch, *info.input_shape, generator=g).to(device)
    y = torch.randint(0, info.num_classes, (m, batch), generator=g).to(device)
    for _ in range(2):  # warm up both
        solo.rule.train_step(x[0], y[0])
        stack.step(x, y)
    solo_t, ratios = [], []
    for r in range(rounds):
        times = {}
        for which in (("solo", "stack") if r % 2 == 0 else ("stack", "solo")):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                if which == "solo":
                    solo.rule.train_step(x[0], y[0])
                else:
                    stack.step(x, y)
            sync(device)
            times[which] = (time.perf_counter() - t0) / steps
        solo_t.append(times["solo"])
        ratios.append(m * times["solo"] / times["stack"])
    return statistics.median(solo_t), statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", default="1,4,16")
    ap.add_argument("--rules", default="bp,fa,dtp")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3, help="steps per round and side")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--net", choices=["mnist-fc", "cifar-lc"], default="mnist-fc",
                    help="cifar-lc: Table 3's CIFAR-10 LC net (where a search spends most of its time)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    arch = "lc" if args.net == "cifar-lc" else "fc"
    info, hidden = (SMOKE, [8, 8]) if args.smoke else (CIFAR if arch == "lc" else MNIST, None)
    rounds, steps = (2, 1) if args.smoke else (args.rounds, args.steps)
    batch = 8 if args.smoke else args.batch
    name = "CIFAR LC" if arch == "lc" else "MNIST FC"
    print(f"{name} net {'(smoke) ' if args.smoke else ''}batch {batch}, {args.device}, {args.threads} thread(s), "
          f"Adam; ratio = M solo steps / one stacked step (median of {rounds} interleaved rounds)")
    print(f"{'rule':6s} {'M':>4s} {'solo ms/step':>13s} {'stacked ms/step':>16s} {'ratio':>7s}")
    for rule in args.rules.split(","):
        for m in (int(v) for v in args.members.split(",")):
            solo, ratio = bench(rule, m, info, hidden, batch, rounds, steps, args.device, arch)
            print(f"{rule:6s} {m:4d} {1e3 * solo:13.2f} {1e3 * m * solo / ratio:16.2f} {ratio:7.2f}", flush=True)


if __name__ == "__main__":
    main()
