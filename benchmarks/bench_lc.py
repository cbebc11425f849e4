"""Locally-connected layer: forward+backward time and memory of ``lc2d`` vs ``F.conv2d`` (same multiply-adds)
and vs the obvious ``F.unfold`` + ``einsum`` version.

    python benchmarks/bench_lc.py [--quick] [--einsum-all] [--threads N] [--dtype float32|bfloat16]
    python benchmarks/bench_lc.py --papers [--batch 128] [--repeats 5]

``--papers``: lc2d / conv2d forward+backward time at the real layer shapes of the papers' LC nets (Table 3
of Bartunov et al.: MNIST, CIFAR-10, the first ImageNet layers), one thread, conv2d and lc2d interleaved
(repeat r of each runs back to back, so drifting load hits both alike), timed in CPU time of the one
thread (``time.thread_time``: time spent waiting for a core does not count, shared caches still do), with
``uptime``'s load average: numbers taken at a load average of 3 or more on this 2-core machine are indicative.

The einsum baseline is so slow (its batched matmul over strided operands falls back to a per-position loop)
that by default it is timed at batch 32 only; ``--einsum-all`` times it everywhere (minutes more).

Memory is reported two ways, both deterministic and independent of the allocator's caching:
- ``saved``: bytes of the tensors autograd keeps between forward and backward (counted with
  ``torch.autograd.graph.saved_tensors_hooks``, each storage once, parameters and the input excluded since
  every variant holds them anyway);
- ``peak``: the peak of live bytes allocated during forward+backward, above what existed before the step,
  tracked with a ``TorchDispatchMode`` that records every storage an op allocates and notices (weak
  references) when it is freed. It includes the output, the gradients and every temporary that is a
  tensor; allocations hidden inside one kernel (BLAS workspace, a copy bmm makes internally) are not seen.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bioscale.layers.locally_connected import lc2d, lc_out_size


def unfold_einsum(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """The obvious version: F.unfold, einsum over positions, autograd for the backward."""
    oh, ow, o, c, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (N, K, L)
    out = torch.einsum("nkl,lok->nol", cols, weight.reshape(oh * ow, o, c * kh * kw))
    return out.reshape(x.shape[0], o, oh, ow) + bias


def _step_fn(kind: str, n: int, c: int, o: int, size: int, k: int, dtype: torch.dtype
             ) -> tuple[Callable[[], None], list[Tensor]]:
    pad, stride = k // 2, 1
    oh, ow = lc_out_size(size, k, stride, pad)
    x = torch.randn(n, c, size, size, dtype=dtype, requires_grad=True)
    if kind == "conv2d":
        w = torch.randn(o, c, k, k, dtype=dtype, requires_grad=True)
        b = torch.randn(o, dtype=dtype, requires_grad=True)

        def fwd() -> Tensor:
            return F.conv2d(x, w, b, stride, pad)
    else:
        w = torch.randn(oh, ow, o, c, k, k, dtype=dtype, requires_grad=True)
        b = torch.randn(o, oh, ow, dtype=dtype, requires_grad=True)
        op = lc2d if kind == "lc2d" else unfold_einsum

        def fwd() -> Tensor:
            return op(x, w, b, stride, pad)

    g = torch.randn(n, o, oh, ow, dtype=dtype)

    def step() -> None:
        x.grad = w.grad = b.grad = None
        fwd().backward(g)

    return step, [x, w, b]


def time_step(step: Callable[[], None], repeats: int, warmup: bool = True) -> float:
    if warmup:
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def saved_bytes(step: Callable[[], None], exclude: list[Tensor]) -> int:
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


class _PeakTracker(TorchDispatchMode):
    """Live bytes of every storage an op allocates (outputs that are not views of its inputs), dropped when
    the storage is freed; ``peak`` is the maximum of the live total sampled after every op."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr not in inputs and ptr not in self.live and st.nbytes() > 0:
                    self.live[ptr] = (StorageWeakRef(st), st.nbytes())
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def peak_bytes(step: Callable[[], None]) -> int:
    tracker = _PeakTracker()
    with tracker:
        step()
    return tracker.peak


PAPER_SHAPES = {  # (in_channels, in_size, out_channels, kernel, stride), padding kernel // 2 (presets.LC_LAYERS)
    "mnist-1": (1, 28, 32, 3, 2), "mnist-2": (32, 14, 64, 3, 2),
    "cifar-1": (3, 32, 64, 5, 2), "cifar-2": (64, 16, 128, 5, 2), "cifar-3": (128, 8, 256, 3, 1),
}


def _paper_step(kind: str, n: int, shape: tuple[int, int, int, int, int]) -> Callable[[], None]:
    c, size, o, k, stride = shape
    pad = k // 2
    oh, ow = lc_out_size(size, k, stride, pad)
    x = torch.randn(n, c, size, size, requires_grad=True)
    if kind == "conv2d":
        w = torch.randn(o, c, k, k, requires_grad=True)
        b = torch.randn(o, requires_grad=True)
        fwd: Callable[[], Tensor] = lambda: F.conv2d(x, w, b, stride, pad)  # noqa: E731
    else:
        w = torch.randn(oh, ow, o, c, k, k, requires_grad=True)
        b = torch.randn(o, oh, ow, requires_grad=True)
        fwd = lambda: lc2d(x, w, b, stride, pad)  # noqa: E731
    g = torch.randn(n, o, oh, ow)

    def step() -> None:
        x.grad = w.grad = b.grad = None
        fwd().backward(g)

    return step


def papers(batch: int, repeats: int) -> None:
    import os

    torch.set_num_threads(1)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, 1 thread, float32, batch {batch}, forward+backward, thread CPU time, "
          f"min of {repeats} interleaved repeats; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + (" (loaded: indicative only)" if load[0] >= 3 else ""))
    print(f"{'layer':8} {'shape (c, size, o, k, s)':26} {'conv2d ms':>9} {'lc2d ms':>8} {'lc/conv':>7}")
    for name, shape in PAPER_SHAPES.items():
        steps = {kind: _paper_step(kind, batch, shape) for kind in ("conv2d", "lc2d")}
        times: dict[str, list[float]] = {kind: [] for kind in steps}
        for step in steps.values():
            step()  # warm-up
        for _ in range(repeats):
            for kind, step in steps.items():
                t0 = time.thread_time()  # CPU time of this (only) thread: waiting for a core does not count
                step()
                times[kind].append(time.thread_time() - t0)
        cv, lc = min(times["conv2d"]) * 1e3, min(times["lc2d"]) * 1e3
        print(f"{name:8} {shape!s:26} {cv:9.1f} {lc:8.1f} {lc / cv:7.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 32 only, fewer repeats")
    ap.add_argument("--einsum-all", action="store_true", help="also time the einsum baseline at batch 128")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--papers", action="store_true", help="lc2d/conv2d at the papers' layer shapes")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.papers:
        papers(args.batch, args.repeats)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    batches = [32] if args.quick else [32, 128]
    repeats = 3 if args.quick else 5
    c = o = 64
    k = 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"{c}->{c} channels, kernel {k}, padding {k // 2}, stride 1; forward+backward, "
          f"median of {repeats} (einsum: 1)")
    header = (f"{'batch':>5} {'size':>5} | {'conv2d ms':>9} {'lc2d ms':>8} {'einsum ms':>9} | "
              f"{'lc/conv':>7} {'lc/einsum':>9} | {'saved MB lc':>11} {'einsum':>7} {'conv':>6} | "
              f"{'peak MB lc':>10} {'einsum':>7} {'conv':>6}")
    print(header)
    print("-" * len(header))
    for n in batches:
        for size in (16, 32):
            kinds = ["conv2d", "lc2d"] + (["einsum"] if n == 32 or args.einsum_all else [])
            row = {"einsum": (math.nan, math.nan, math.nan)}
            for kind in kinds:
                step, tensors = _step_fn(kind, n, c, o, size, k, dtype)
                # the einsum baseline is ~10x slower: time it once (its memory runs serve as warm-up)
                mem = (saved_bytes(step, tensors) / 2**20, peak_bytes(step) / 2**20)
                reps = 1 if kind == "einsum" else repeats
                row[kind] = (time_step(step, reps, warmup=kind != "einsum") * 1e3, *mem)
            cv, lc, es = row["conv2d"], row["lc2d"], row["einsum"]
            print(f"{n:>5} {size:>5} | {cv[0]:>9.1f} {lc[0]:>8.1f} {es[0]:>9.1f} | "
                  f"{lc[0] / cv[0]:>7.2f} {lc[0] / es[0]:>9.2f} | {lc[1]:>11.1f} {es[1]:>7.1f} {cv[1]:>6.1f} | "
                  f"{lc[2]:>10.1f} {es[2]:>7.1f} {cv[2]:>6.1f}")


if __name__ == "__main__":
    main()
