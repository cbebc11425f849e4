"""Step time of the feedback-alignment family relative to backprop: same net, same batch, same optimiser.

    python benchmarks/bench_backward_rules.py [--quick] [--threads N] [--device cpu|cuda] [--rounds R]
        [--clock wall|cpu] [--rules fa,ss,...] [--nets fc256,mlp128,mlp1024,conv]

One "step" is the rule's whole ``train_step`` (forward, loss, the rule's backward, Adam step and the rule's
hooks). ``--clock cpu`` times this process's CPU time instead of elapsed time, for shared machines.
Rules are timed in many short interleaved rounds (every rule a few steps per round, in a rotating
order) so that load from other processes hits them alike; a rule's ratio is the median over rounds of its
step time divided by bp's in the same round, and the bp column is bp's median step time.

``fa=W`` (not a rule: a probe) is fa with every B the layer's own W: it computes backprop through the
feedback layers' machinery (torch's node with the saved W swapped for "B"), so fa=W/bp is what that
machinery costs, fa/fa=W what reading a separate B costs, and ss/fa what computing sign(W) * scale costs.

Nets: Bartunov et al.'s MNIST FC net 784-256x5-10 at batch 128, the MLP 784-1024-1024-10 (tanh) at batch
128 and 1024, and a small conv net (Table 3's MNIST
LC net with shared weights: conv 3x3/32/s2, conv 3x3/64/s2, FC 1024, 10) at batch 128.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bioscale.layers.feedback import is_feedback_layer
from bioscale.models.base import Layer, LayeredNet, glorot_
from bioscale.rules.base import BackwardRule
from bioscale.rules.bp import BP
from bioscale.rules.feedback import BRSF, DFA, FA, FRSF, BackwardParams, KolenPollack, KPParams, SignSymmetry
from bioscale.spec import OptimSpec


class _FAOwnWeight(FA):
    """The ``fa=W`` probe: fa's layers with B = W (their own weight, shared, not a copy)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        model = super().prepare(model)
        for layer in model.modules():
            if is_feedback_layer(layer):
                layer.feedback.matrix = layer.weight.detach()
        return model


RULES: dict[str, Callable[[], BackwardRule]] = {
    "bp": lambda: BP(BackwardParams(), OptimSpec()),
    "fa": lambda: FA(BackwardParams(), OptimSpec()),
    "ss": lambda: SignSymmetry(BackwardParams(), OptimSpec()),
    "frsf": lambda: FRSF(BackwardParams(), OptimSpec()),
    "brsf": lambda: BRSF(BackwardParams(), OptimSpec()),
    "kp": lambda: KolenPollack(KPParams(), OptimSpec()),
    "dfa": lambda: DFA(BackwardParams(), OptimSpec()),
    "fa=W": lambda: _FAOwnWeight(BackwardParams(), OptimSpec()),
}


def mlp(widths: tuple[int, ...] = (784, 1024, 1024, 10)) -> LayeredNet:
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        op = nn.Linear(a, b)
        glorot_(op)
        last = i == len(widths) - 2
        layers.append(Layer(op, None if last else nn.Tanh(), (1, 28, 28) if i == 0 else (a,), (b,),
                            flatten=i == 0))
    return LayeredNet(layers)


def mnist_fc() -> LayeredNet:
    """Bartunov et al.'s MNIST FC net (Table 3: five tanh layers of 256), where a rule's fixed per-layer
    cost shows most (issue 13: fa/ss at most 1.02x bp)."""
    return mlp((784, 256, 256, 256, 256, 256, 10))


def convnet() -> LayeredNet:
    c1, c2 = nn.Conv2d(1, 32, 3, 2, 1), nn.Conv2d(32, 64, 3, 2, 1)
    f1, f2 = nn.Linear(64 * 7 * 7, 1024), nn.Linear(1024, 10)
    for op in (c1, c2, f1, f2):
        glorot_(op)
    return LayeredNet([
        Layer(c1, nn.Tanh(), (1, 28, 28), (32, 14, 14)),
        Layer(c2, nn.Tanh(), (32, 14, 14), (64, 7, 7)),
        Layer(f1, nn.Tanh(), (64, 7, 7), (1024,), flatten=True),
        Layer(f2, None, (1024,), (10,)),
    ])


CASES: dict[str, tuple[str, Callable[[], LayeredNet], int]] = {
    "fc256": ("MNIST FC 784-256x5-10", mnist_fc, 128),
    "mlp128": ("MLP 784-1024-1024-10", mlp, 128),
    "mlp1024": ("MLP 784-1024-1024-10", mlp, 1024),
    "conv": ("conv 32-64-FC1024", convnet, 128),
}


def bench(make_net: Callable[[], LayeredNet], batch: int, rules: list[str], device: torch.device,
          steps: int, rounds: int, clock: Callable[[], float] = time.perf_counter
          ) -> tuple[float, dict[str, float]]:
    """(median bp seconds/step, {rule: median over rounds of its time / bp's time in the same round})."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    built: dict[str, BackwardRule] = {}
    for name in rules:
        torch.manual_seed(0)
        rule = RULES[name]()
        rule.prepare(make_net()).to(device)
        rule.setup(device)
        for _ in range(3):  # warm-up: allocator, optimiser state, kernels
            rule.train_step(x, y)
        built[name] = rule
    ratios: dict[str, list[float]] = {n: [] for n in rules}
    bp_times = []
    for r in range(rounds):
        order = rules[r % len(rules):] + rules[:r % len(rules)]
        t: dict[str, float] = {}
        for name in order:
            rule = built[name]
            _sync(device)
            t0 = clock()
            for _ in range(steps):
                rule.train_step(x, y)
            _sync(device)
            t[name] = (clock() - t0) / steps
        bp_times.append(t["bp"])
        for name in rules:
            ratios[name].append(t[name] / t["bp"])
    return statistics.median(bp_times), {n: statistics.median(v) for n, v in ratios.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps and rounds (a smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--nets", default=",".join(CASES), help="which nets (default: all)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (all threads), robust to a machine shared with other "
                         "jobs; wall: elapsed time (use on a GPU or an idle machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rules = args.rules.split(",")
    if "bp" not in rules:
        rules = ["bp", *rules]
    rounds = args.rounds or (6 if args.quick else 30)
    cases = [CASES[n] for n in args.nets.split(",")]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"device={device} threads={torch.get_num_threads()} rounds={rounds} clock={args.clock} "
          f"torch={torch.__version__}")
    header = "| net | batch | bp ms/step | " + " | ".join(f"{n}/bp" for n in rules if n != "bp") + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for label, make, batch in cases:
        steps = max(1, 4 * 128 // batch) * (10 if device.type == "cuda" else 1)
        bp_time, ratio = bench(make, batch, rules, device, steps, rounds, clock)
        cells = " | ".join(f"{ratio[n]:.3f}" for n in rules if n != "bp")
        print(f"| {label} | {batch} | {1e3 * bp_time:.2f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
