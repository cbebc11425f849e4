"""What Bartunov et al.'s search costs: Table 1's 38 cells x 60 configurations x 500 epochs, and the same with
successive halving, from epoch times measured here.

    PYTHONPATH=. python benchmarks/search_cost.py [--device cpu|cuda] [--examples N] [--threads T] [--out DIR]

Each cell of ``grids/table4-search.yaml`` (its first configuration) is trained for two epochs on synthetic data
of the paper's shape (MNIST 1x28x28, CIFAR-10 3x32x32, so the nets are Table 3's) with ``--examples`` training
examples; the second epoch's training pass and the evaluation passes a search epoch makes (train error on the
training set, validation, test) are timed per example and scaled to the paper's sizes with the grid's hold-out:
MNIST 50,000 train / 10,000 validation / 10,000 test, CIFAR-10 45,000 / 5,000 / 10,000. Times per example are
what a small subset measures: the ratio between cells is the robust part, the absolute hours depend on the
machine and its load (printed with the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from bioscale.grid import expand, load_grid, resolve
from bioscale.job import Job
from bioscale.promote import total_epochs
from bioscale.spec import PromoteSpec
from bioscale.store import Store
from bioscale.train import Trainer, evaluate

GRID = Path(__file__).resolve().parent.parent / "grids" / "table4-search.yaml"
SIZES = {"mnist": (50_000, 10_000, 10_000, (1, 28, 28)), "cifar10": (45_000, 5_000, 10_000, (3, 32, 32))}
"""Training (after the hold-out), validation and test examples, and the image shape."""
CONFIGS, EPOCHS = 60, 500
SCHEMES = {"random search (the paper's MNIST/CIFAR protocol)": None,
           "successive halving, rungs [10, 50], keep 1/3": PromoteSpec(rungs=[10, 50], keep="1/3"),
           "the paper's ImageNet rule, rung [10], keep 1": PromoteSpec(rungs=[10], keep=1)}


def measure(cell: Job, examples: int, device: str, tmp: Path) -> dict[str, Any]:
    spec = cell.spec
    train_n, val_n, test_n, shape = SIZES[spec.dataset.name]
    raw = spec.model_dump(mode="json")
    raw["dataset"] = {"name": "synthetic", "params": {"train_size": examples + examples // 4,
                                                      "test_size": examples // 4, "shape": list(shape),
                                                      "validation": examples // 4}}
    raw["train"].update(device=device, num_workers=0, diagnostics_every=0, checkpoint=False)
    job = Job("cost", resolve(raw), cell.label)
    trainer = Trainer(job, Store(tmp).job_dir("cost", job.job_id))
    data, model, rule = trainer.build()
    sync = torch.cuda.synchronize if trainer.device is not None and trainer.device.type == "cuda" else (lambda: None)
    for epoch in range(2):  # the first warms up (allocator, kernels, caches)
        train_s, _, _ = trainer.train_epoch(epoch, data, model, rule)
    timed = {}
    for name, loader in (("train_eval", data.train_eval), ("validation", data.validation), ("test", data.test)):
        sync()
        t0 = time.perf_counter()
        evaluate(model, loader, rule)
        sync()
        timed[name] = time.perf_counter() - t0
    per_train = train_s / examples
    epoch_s = (per_train * train_n + timed["train_eval"] / examples * train_n
               + timed["validation"] / (examples // 4) * val_n + timed["test"] / (examples // 4) * test_n)
    return {"cell": cell.label.rsplit(" cfg=", 1)[0], "dataset": spec.dataset.name, "arch": spec.arch.name,
            "rule": spec.rule.name, "schedule": spec.rule.params.get("schedule", ""),
            "train_pass_s": per_train * train_n, "epoch_s": epoch_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--examples", type=int, default=512, help="training examples timed per cell")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/search-cost"))
    p.add_argument("--only", default="", help="comma-separated cell-label prefixes (a quick look)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cells: dict[str, Job] = {}
    for job in expand(load_grid(GRID)):
        cells.setdefault(job.label.rsplit(" cfg=", 1)[0], job)
    chosen = [j for k, j in cells.items() if not args.only or any(k.startswith(o) for o in args.only.split(","))]
    rows = []
    tmp = args.out / "tmp"
    for job in chosen:
        rows.append(measure(job, args.examples, args.device, tmp))
        row = rows[-1]
        print(f"{row['cell']:<32} train pass {row['train_pass_s']:9.1f} s  epoch {row['epoch_s']:9.1f} s", flush=True)
    load = os.getloadavg()
    epoch_s = sum(r["epoch_s"] for r in rows)
    total = {name: epoch_s * total_epochs(scheme, CONFIGS, EPOCHS) / 3600 for name, scheme in SCHEMES.items()}
    epochs = {name: len(rows) * total_epochs(scheme, CONFIGS, EPOCHS) for name, scheme in SCHEMES.items()}
    lines = [f"# Search cost on {args.device} ({args.threads} thread(s)), {len(rows)} cells, timed on {args.examples} "
             f"examples per cell, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", "",
             "| cell | epoch (s) |", "|---|---:|", *(f"| {r['cell']} | {r['epoch_s']:.1f} |" for r in rows), "",
             "| scheme | epochs | hours (one job at a time) |", "|---|---:|---:|",
             *(f"| {name} | {epochs[name]:,} | {total[name]:,.0f} |" for name in SCHEMES)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.device}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{args.device}.json").write_text(json.dumps({"rows": rows, "epochs": epochs, "hours": total,
                                                              "load": load, "examples": args.examples}, indent=1))
    print("\n".join(lines[-(len(SCHEMES) + 2):]))


if __name__ == "__main__":
    main()
