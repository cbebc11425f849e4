"""RetinaNet step time under ss and fa relative to bp (issue 14): same model, same batch, same optimiser.

    python benchmarks/bench_retinanet.py [--side 512] [--batch 2] [--rounds 3] [--threads N] [--device cpu|cuda]
        [--amp] [--backbone resnet18|resnet50]

One step is the rule's whole ``train_step`` (forward with the loss dict, the rule's backward, SGD step) on a
fixed batch of random images with three boxes each. Rules are timed in interleaved rounds (one step each per
round, rotating order) so that load from other processes hits them alike; a rule's ratio is the median over
rounds of its step time divided by bp's in the same round. On a GPU it also prints images per second (with
``--amp``: bfloat16 autocast, as ``train.amp``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bioscale import tasks
from bioscale.data.coco import DetectionInfo
from bioscale.models import build_model
from bioscale.rules import build_rule
from bioscale.spec import JobSpec

RULES = ("bp", "ss", "fa")


def _setup(rule: str, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    spec = JobSpec.model_validate({"dataset": "coco", "rule": rule, "optim": {"name": "sgd", "lr": 1e-3},
                                   "arch": {"name": "retinanet", "params": {"backbone": args.backbone}}})
    torch.manual_seed(0)
    r = build_rule(spec)
    r.task = tasks.get("detection")
    info = DetectionInfo("coco", 80, (), (), 1, 1, (3, args.side, args.side))
    model = r.prepare(build_model(spec.arch, info)).to(args.device)
    r.setup(torch.device(args.device), args.amp)
    model.train()
    return r


def _batch(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    s = args.side
    images = [torch.rand(3, s, s, generator=g).to(args.device) for _ in range(args.batch)]
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.3, 0.6, 0.7, 0.95]]) * s
    targets = [{"boxes": boxes.to(args.device), "labels": torch.tensor([1, 5, 9], device=args.device)}
               for _ in range(args.batch)]
    return images, targets


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet50"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rules = {name: _setup(name, args) for name in RULES}
    x, y = _batch(args)
    for r in rules.values():  # warm-up
        r.train_step(x, y)
    times: dict[str, list[float]] = {name: [] for name in RULES}
    for k in range(args.rounds):
        for name in RULES[k % len(RULES):] + RULES[:k % len(RULES)]:
            _sync(args.device)
            t0 = time.perf_counter()
            rules[name].train_step(x, y)
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)
    bp = statistics.median(times["bp"])
    print(f"RetinaNet {args.backbone}, batch {args.batch} x {args.side} px, {args.device}"
          f"{' amp' if args.amp else ''}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    for name in RULES:
        ratio = statistics.median(t / b for t, b in zip(times[name], times["bp"], strict=True))
        print(f"  {name:3s} {statistics.median(times[name]):7.3f} s/step  x{ratio:.2f} of bp  "
              f"{args.batch / statistics.median(times[name]):7.1f} images/s")
    print(f"  bp  {bp:7.3f} s/step")


if __name__ == "__main__":
    main()
