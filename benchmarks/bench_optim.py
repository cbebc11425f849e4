"""Optimiser step time: fused vs foreach vs loop (``OptimSpec.impl``), on the papers' nets' parameter shapes.

Prints a table of ms per step and the ratio to ``loop`` (what bioscale used on the CPU before ``impl``), plus
the largest parameter difference from ``loop`` after ``--steps`` steps. Interleaved repeats, one thread by
default, timed in thread CPU time; quote ``uptime``'s load average with the numbers (printed first).

    PYTHONPATH=$PWD python benchmarks/bench_optim.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bioscale.optim import build_optimizer
from bioscale.spec import OptimSpec

# (name, parameter shapes): Bartunov et al.'s MNIST FC net (784-256x5-10, Table 3) and CIFAR LC net
# (presets.LC_LAYERS: 3->64 5x5/2, 64->128 5x5/2, 128->256 3x3/1 on 32x32, then FC 1024 and 10), weight
# (out_h, out_w, out, in, kh, kw) and bias (out, out_h, out_w) per LC layer
SHAPES = {
    "mnist-fc": [(256, 784), (256,)] + [(256, 256), (256,)] * 4 + [(10, 256), (10,)],
    "cifar-lc": [(16, 16, 64, 3, 5, 5), (64, 16, 16), (8, 8, 128, 64, 5, 5), (128, 8, 8),
                 (8, 8, 256, 128, 3, 3), (256, 8, 8), (1024, 256 * 64), (1024,), (10, 1024), (10,)],
}
IMPLS = ("loop", "foreach", "fused")


def make(shapes: list[tuple[int, ...]], impl: str, name: str, dtype: torch.dtype) -> tuple[list, torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype) * 0.05) for s in shapes]
    spec = OptimSpec(name=name, impl=impl, lr=1e-3, momentum=0.9 if name == "sgd" else 0.0)
    return params, build_optimizer([{"params": params}], spec)


def grads(params: list, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; torch {torch.__version__}; "
          f"threads {args.threads}")
    print(f"{'net':9} {'optim':5} {'impl':8} {'ms/step':>8} {'vs loop':>8} {'max|diff| f32':>14}")
    for net, shapes in SHAPES.items():
        for name in ("adam", "sgd"):
            built = {impl: make(shapes, impl, name, torch.float32) for impl in IMPLS}
            times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
            for r in range(args.repeats):  # interleaved, so drifting load hits every impl alike
                for impl in IMPLS:
                    params, opt = built[impl]
                    grads(params, r)
                    t0 = time.thread_time()  # CPU time: waiting for a core does not count
                    for _ in range(args.steps):
                        opt.step()
                    times[impl].append((time.thread_time() - t0) / args.steps * 1e3)
            ref = [p.detach() for p in built["loop"][0]]
            loop_ms = min(times["loop"])
            for impl in IMPLS:
                diff = max(float((p.detach() - q).abs().max()) for p, q in zip(built[impl][0], ref, strict=True))
                ms = min(times[impl])
                print(f"{net:9} {name:5} {impl:8} {ms:8.3f} {loop_ms / ms:7.2f}x {diff:14.2e}")


if __name__ == "__main__":
    main()
