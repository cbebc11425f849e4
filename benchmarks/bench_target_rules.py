"""Step time of the target-propagation rules relative to backprop on Bartunov et al.'s FC nets.

A backprop step is ~3 matmul passes per layer (forward, input gradient, weight gradient). A parallel
TP step with one inverse update per batch (K=1) needs about 4 + 3K: forward, two inverse passes for the
difference targets, the forward loss's weight gradient (inputs are detached, so no input gradient), and
per inverse update a noisy forward pass, the inverse's forward and its weight gradient. So the floor is
about (4 + 3K)/3 = 2.3x bp; an alternating epoch does the same work in two passes.

Rules are timed round-robin over many short rounds and the median is reported, so load from other
processes hits every rule alike; with ``--clock cpu`` (the default) a round is measured in this process's
CPU time, which other processes on a shared machine barely disturb (use one thread for that).
Usage: ``python benchmarks/bench_target_rules.py [--quick] [--threads N] [--clock cpu|wall]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bioscale.data.base import DataShape
from bioscale.models.presets import FCParams, build_fc
from bioscale.rules.base import BPParams, Rule
from bioscale.rules.bp import BP
from bioscale.rules.target import AOSDTP, DTP, SDTP, AOSDTPParams, DTPParams, TargetParams
from bioscale.spec import OptimSpec

NETS = {
    "mnist-fc": DataShape("mnist", (1, 28, 28), 10, 60000, 10000),
    "cifar-fc": DataShape("cifar10", (3, 32, 32), 10, 50000, 10000),
}
# (label, rule class, params, phase): "train" is a parallel step; "inverse"/"forward" the two
# alternating passes.
CASES = [
    ("bp", BP, BPParams(), "train"),
    ("dtp parallel", DTP, DTPParams(), "train"),
    ("dtp alt: inverse pass", DTP, DTPParams(schedule="alternating"), "inverse"),
    ("dtp alt: forward pass", DTP, DTPParams(schedule="alternating"), "forward"),
    ("sdtp parallel", SDTP, TargetParams(), "train"),
    ("sdtp alt: inverse pass", SDTP, TargetParams(schedule="alternating"), "inverse"),
    ("sdtp alt: forward pass", SDTP, TargetParams(schedule="alternating"), "forward"),
    ("aosdtp parallel (512 aux)", AOSDTP, AOSDTPParams(), "train"),
]


def build(info: DataShape, cls: type[Rule], params: object, phase: str) -> Rule:
    torch.manual_seed(0)
    rule = cls(params, OptimSpec(lr=1e-4), OptimSpec(lr=1e-4))
    rule.prepare(build_fc(FCParams(), info))
    rule.setup(torch.device("cpu"))
    rule.begin_phase(phase)
    return rule


def time_steps(rule: Rule, x: torch.Tensor, y: torch.Tensor, steps: int, clock: str) -> float:
    now = time.process_time if clock == "cpu" else time.perf_counter
    start = now()
    for _ in range(steps):
        rule.train_step(x, y)
    return (now() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, rounds = (2, 5) if args.quick else (3, 40)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{steps} steps x {rounds} rounds, median {args.clock} ms/step")
    for net in args.nets:
        info = NETS[net]
        x = torch.rand(args.batch_size, *info.input_shape)
        y = torch.randint(0, info.num_classes, (args.batch_size,))
        rules = {label: build(info, cls, params, phase) for label, cls, params, phase in CASES}
        times: dict[str, list[float]] = {label: [] for label in rules}
        for rule in rules.values():  # warm-up
            rule.train_step(x, y)
        for _ in range(rounds):
            for label, rule in rules.items():
                times[label].append(time_steps(rule, x, y, steps, args.clock))
        med = {label: statistics.median(t) for label, t in times.items()}
        bp = med["bp"]
        print(f"\n{net} ({' -> '.join(str(layer.op.out_features) for layer in rules['bp'].model.layers)})")
        print(f"{'rule':<28}{'ms/step':>10}{'x bp':>8}")
        for label, t in med.items():
            print(f"{label:<28}{1000 * t:>10.2f}{t / bp:>8.2f}")
        for name in ("dtp", "sdtp"):
            alt = med[f"{name} alt: inverse pass"] + med[f"{name} alt: forward pass"]
            print(f"{name + ' alt: epoch (both passes)':<28}{1000 * alt:>10.2f}{alt / bp:>8.2f}")


if __name__ == "__main__":
    main()
