"""The GPU suite of issue 13, as one run: ``bash benchmarks/gpu_suite.sh`` (which calls this file).

On one GPU, sized by a time budget (``--budget``, default 420 s; an H200 should finish in under 8 minutes):

1. ``table1``: every cell of ``grids/table1.yaml`` (38 jobs: its rules, nets, schedules and Table 5 optimiser
   settings) built on the GPU with its dataset's shape (MNIST 1x28x28, CIFAR-10 3x32x32), batch 128: the step
   time of each training phase (alternating target rules: the inverse pass and the forward pass), the
   evaluation forward at the job's eval batch, and the peak GPU memory of training. An epoch is
   steps x step time per phase plus the evaluation of the training and test sets (``train_error: eval``).
   From it: the MNIST FC epoch time per rule (solo) and the CIFAR LC step time and peak memory (bp, fa, dtp).
2. ``imagenet_lc``: the ImageNet LC net (Table 3, 3x224x224, 1000 classes) at batch 128 under bp: step time,
   peak memory and whether it fits 16 GB (Bartunov et al. could not fit it).
3. ``resnet18``: ResNet-18 (224x224, 1000 classes, SGD with momentum, batch 256) images/s under bp, ss and fa
   with bf16 autocast and channels_last (``train.amp``, ``train.channels_last``), and bp in float32.
4. ``compile``: the MNIST FC net under bp, eager against ``train.compile: reduce-overhead`` (CUDA graphs).
5. ``packing``: k processes training the same cell at once on the GPU against one (the local executor's
   ``--jobs-per-gpu k``): their total steps/s over one process's, for the MNIST FC and CIFAR LC nets.
6. ``projection``: the wall time of grids/table1.yaml on this GPU: each cell's epoch time x 500 epochs,
   stretched by the measured packing factor and scheduled longest-first onto k slots, for k = 1 and 4
   (--smoke: 1 and 2).
7. ``stacked``: stacked runs (``bioscale.stack``): M = 64 MNIST FC jobs (bp, fa, dtp) as one stacked model
   against M solo runs of the same jobs; the throughput gain (--smoke: M = 4).

``--smoke`` runs the same code on the CPU with tiny nets and inputs, a few steps each, and skips what needs
CUDA (peak memory, CUDA graphs) saying so; a test runs it. Results: ``results/gpu/<UTC time>/suite.json``
(every number, with provenance: commit, host, GPU, torch, load average) and ``suite.md``; also copied to
``$OUT`` when that is set (the device machine's return folder).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

EPOCHS = 500
"""Bartunov et al.'s budget per Table 1 cell."""
SIZES = {"mnist": ((1, 28, 28), 60_000, 10_000), "cifar10": ((3, 32, 32), 50_000, 10_000)}
"""(input shape, training examples, test examples) of the datasets table1 uses."""
SMOKE_SIZES = {"mnist": ((1, 8, 8), 512, 256), "cifar10": ((3, 8, 8), 512, 256)}
SMOKE_ARCH = {"fc": {"hidden": [32, 32]}, "lc": {"layers": [[3, 8, 2]], "hidden": [32]},
              "conv": {"layers": [[3, 8, 2]], "hidden": [32]}}
"""--smoke: table1's cells with these nets on tiny inputs (same rules, schedules and optimisers)."""
PACK_SLOTS = (1, 4)
GIB = 2.0**30


class Suite:
    def __init__(self, out: Path, smoke: bool, cuda: bool, budget: float) -> None:
        import torch

        self.out, self.smoke, self.cuda = out, smoke, cuda
        self.device = torch.device("cuda" if cuda else "cpu")
        self.budget, self.start = budget, time.perf_counter()
        self.results: dict[str, Any] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def run(self, name: str, fn: Callable[[], dict], cuda_only: bool = False) -> None:
        if cuda_only and not self.cuda:
            self.results[name] = {"status": "skipped", "why": "--smoke: CUDA-only, skipped"}
            print(f"[{name}] --smoke: CUDA-only, skipped", flush=True)
            return
        print(f"[{name}] running ({self.left():.0f} s of the budget left) ...", flush=True)
        start = time.perf_counter()
        try:
            entry = {"status": "ok", **fn()}
        except Exception as exc:
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=-4)}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.results[name] = entry
        print(f"[{name}] {entry['status']} in {entry['seconds']} s" +
              (f": {entry['error']}" if entry["status"] == "failed" else ""), flush=True)


# ---- building and timing one training setup ---------------------------------------------------------------


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], Any], device: Any, warmup: int, max_steps: int, max_s: float) -> tuple[float, int]:
    """(seconds per call, calls timed): ``warmup`` untimed calls, then calls until ``max_steps`` or ``max_s``."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    n = 0
    while n < max_steps and (n < 2 or time.perf_counter() - t0 < max_s):
        step()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n, n


def peak_reset(device: Any) -> None:
    """Free what the previous measurement left (its model and optimiser may sit in reference cycles until a
    collection) and start the peak count afresh, so a peak is this measurement's alone."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / GIB, 3) if device.type == "cuda" else None


def build(spec: Any, family: str, shape: tuple[int, ...], classes: int, batch: int, device: Any,
          amp: bool | str = False, channels_last: bool = False, compile_mode: str | bool = False) -> tuple:
    """(rule, model, x, y): ``spec``'s rule and net on ``device`` as the trainer sets them up, and one batch."""
    import torch

    from bioscale import accel
    from bioscale.data.base import DataShape
    from bioscale.models import build_model
    from bioscale.rules import build_rule

    torch.manual_seed(0)
    info = DataShape(family, shape, classes, batch * 4, batch)  # type: ignore[arg-type]
    rule = build_rule(spec)
    model = rule.prepare(build_model(spec.arch, info))
    model.to(device)
    if channels_last:
        accel.channels_last(model)
    rule.setup(device, amp)
    if compile_mode:
        accel.compile_model(rule, str(compile_mode))
    x = torch.rand(batch, *shape, device=device)
    if channels_last:
        x = accel.nhwc(x)
    y = torch.randint(0, classes, (batch,), device=device)
    return rule, model, x, y


def step_fn(rule: Any, x: Any, y: Any, compile_mode: str | bool = False) -> Callable[[], Any]:
    from bioscale import accel

    mark = accel.step_marker(compile_mode, x.device)
    if mark is None:
        return lambda: rule.train_step(x, y)
    return lambda: (mark(), rule.train_step(x, y))


# ---- 1. table1 cells --------------------------------------------------------------------------------------


def table1_cells(smoke: bool) -> list[tuple[str, Any]]:
    """(label, spec) of every job of grids/table1.yaml; with --smoke, their nets made tiny."""
    from bioscale.runner import expand_grid

    _, jobs = expand_grid(REPO / "grids" / "table1.yaml")
    cells = []
    for job in jobs:
        spec = job.spec
        if smoke:
            spec = spec.model_copy(update={"arch": spec.arch.model_copy(update={"params": SMOKE_ARCH[spec.arch.name]})})
        cells.append((job.label, spec))
    return cells


def measure_cell(s: Suite, label: str, spec: Any, seconds: float) -> dict[str, Any]:
    """One table1 cell: step time per phase, eval time per batch, peak memory, and the epoch it makes."""
    import torch

    family = spec.dataset.name
    shape, n_train, n_test = (SMOKE_SIZES if s.smoke else SIZES)[family]
    batch, eval_batch = spec.train.batch_size, spec.train.eval_batch_size
    peak_reset(s.device)
    rule, model, x, y = build(spec, family, shape, 10, batch, s.device, spec.train.amp)
    phases: dict[str, float] = {}
    for phase in rule.phases(0):
        rule.begin_phase(phase)
        phases[phase], _ = timed(step_fn(rule, x, y), s.device, warmup=2 if s.smoke else 3,
                                 max_steps=3 if s.smoke else 200, max_s=seconds / len(rule.phases(0)))
    peak = peak_gib(s.device)
    xe = torch.rand(min(eval_batch, n_train), *shape, device=s.device)
    model.eval()
    with torch.no_grad():
        eval_s, _ = timed(lambda: model(xe), s.device, warmup=1, max_steps=3 if s.smoke else 20, max_s=seconds / 4)
    model.train()
    steps = math.ceil(n_train / batch)
    evals = math.ceil(n_train / len(xe)) + math.ceil(n_test / len(xe))  # train_error: eval, then the test set
    train_s = sum(steps * t for t in phases.values())
    epoch_s = train_s + evals * eval_s
    return {"label": label, "dataset": family, "arch": spec.arch.name, "rule": spec.rule.name,
            "schedule": spec.rule.params.get("schedule"), "batch": batch,
            "step_ms": {p: round(1e3 * t, 3) for p, t in phases.items()}, "eval_ms": round(1e3 * eval_s, 3),
            "epoch_train_s": round(train_s, 4), "epoch_s": round(epoch_s, 4),
            "cell_hours": round(EPOCHS * epoch_s / 3600, 4), "peak_gib": peak}


def run_table1(s: Suite) -> dict:
    cells = table1_cells(s.smoke)
    per_cell = max(0.3, 0.30 * s.left() / len(cells)) if not s.smoke else 0.05
    rows, problems = [], []
    for label, spec in cells:
        try:
            rows.append(measure_cell(s, label, spec, per_cell))
        except Exception as exc:
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
    return {"cells": rows, "problems": problems, "seconds_per_cell": round(per_cell, 2)}


# ---- 2. the ImageNet LC net --------------------------------------------------------------------------------


def run_imagenet_lc(s: Suite) -> dict:
    """Table 3's ImageNet LC net at batch 128 under bp (Adam): step time, peak memory, fits 16 GB?"""
    import torch

    from bioscale.spec import JobSpec

    shape, classes, batch = ((3, 32, 32), 10, 4) if s.smoke else ((3, 224, 224), 1000, 128)
    out: dict[str, Any] = {"input": list(shape), "classes": classes, "batch": batch}
    for rule_name in ("bp",):
        spec = JobSpec.model_validate({"dataset": "imagenet", "arch": "lc", "rule": rule_name,
                                       "train": {"batch_size": batch}})
        peak_reset(s.device)
        try:
            rule, model, x, y = build(spec, "imagenet", shape, classes, batch, s.device)
            step_s, n = timed(step_fn(rule, x, y), s.device, warmup=1 if s.smoke else 2,
                              max_steps=2 if s.smoke else 10, max_s=min(30.0, max(5.0, 0.15 * s.left())))
            params = sum(p.numel() for p in model.parameters())
            peak = peak_gib(s.device)
            out[rule_name] = {"step_ms": round(1e3 * step_s, 1), "steps_timed": n, "params_million":
                              round(params / 1e6, 1), "peak_gib": peak,
                              "fits_16gb": None if peak is None else peak * GIB <= 16e9}
            del rule, model, x, y
        except torch.OutOfMemoryError as exc:
            out[rule_name] = {"error": f"out of memory: {exc}"[:300], "fits_16gb": False}
    return out


# ---- 3. ResNet-18 -----------------------------------------------------------------------------------------


def run_resnet18(s: Suite) -> dict:
    """images/s of ResNet-18 under bp, ss, fa with bf16 autocast and channels_last; bp in float32 too."""
    from bioscale.spec import JobSpec

    shape, classes, batch = ((3, 32, 32), 10, 4) if s.smoke else ((3, 224, 224), 1000, 256)
    amp = "bf16" if s.smoke else True  # --smoke: bf16 on the CPU too, the same code path
    runs = [("bp", amp, True), ("ss", amp, True), ("fa", amp, True), ("bp", False, False)]
    out: dict[str, Any] = {"input": list(shape), "batch": batch, "runs": []}
    share = max(3.0, 0.12 * s.left() / len(runs)) if not s.smoke else 0.1
    for rule_name, amp_on, nhwc in runs:
        spec = JobSpec.model_validate({"dataset": "imagenet", "arch": "resnet18", "rule": rule_name,
                                       "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
        peak_reset(s.device)
        rule, _, x, y = build(spec, "imagenet", shape, classes, batch, s.device, amp_on, nhwc)
        step_s, n = timed(step_fn(rule, x, y), s.device, warmup=1 if s.smoke else 5, max_steps=2 if s.smoke else 100,
                          max_s=share)
        out["runs"].append({"rule": rule_name, "amp": amp_on, "channels_last": nhwc,
                            "images_per_s": round(batch / step_s, 1), "step_ms": round(1e3 * step_s, 2),
                            "steps_timed": n, "peak_gib": peak_gib(s.device)})
        del rule, x, y
    fast = {r["rule"]: r["images_per_s"] for r in out["runs"] if r["amp"]}
    out["ratio_to_bp"] = {k: round(v / fast["bp"], 3) for k, v in fast.items() if k != "bp"}
    return out


# ---- 4. torch.compile -------------------------------------------------------------------------------------


def run_compile(s: Suite) -> dict:
    """The MNIST FC net (Table 3: 5 x 256) under bp at batch 128: eager against reduce-overhead."""
    from bioscale.spec import JobSpec

    spec = JobSpec.model_validate({"dataset": "mnist", "arch": "fc", "rule": "bp"})
    out: dict[str, Any] = {}
    for mode in (False, "reduce-overhead"):
        rule, _, x, y = build(spec, "mnist", (1, 28, 28), 10, 128, s.device, compile_mode=mode)
        t0 = time.perf_counter()
        step = step_fn(rule, x, y, mode)
        for _ in range(3):  # compiles (forward, backward, graph recording)
            step()
        sync(s.device)
        warm = time.perf_counter() - t0
        step_s, n = timed(step, s.device, warmup=2, max_steps=500, max_s=5.0)
        out[mode or "eager"] = {"step_ms": round(1e3 * step_s, 3), "steps_timed": n,
                                   "first_steps_s": round(warm, 1)}
    out["speedup"] = round(out["eager"]["step_ms"] / out["reduce-overhead"]["step_ms"], 2)
    return out


# ---- 5. packing -------------------------------------------------------------------------------------------


def pack_worker(payload: str) -> None:
    """One of k processes: build the cell, wait for the common start, train for ``seconds``, print steps/s."""
    import torch

    from bioscale.spec import JobSpec

    args = json.loads(payload)
    torch.set_num_threads(1)
    spec = JobSpec.model_validate(args["spec"])
    device = torch.device(args["device"])
    rule, _, x, y = build(spec, spec.dataset.name, tuple(args["shape"]), 10, spec.train.batch_size, device)
    step = step_fn(rule, x, y)
    for _ in range(3):
        step()
    sync(device)
    ready = Path(args["barrier"])  # every process built and warm: start together
    (ready / str(os.getpid())).touch()
    deadline = time.time() + 600
    while len(list(ready.iterdir())) < args["k"] and time.time() < deadline:
        time.sleep(0.01)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args["seconds"]:
        step()
        n += 1
        if n % 10 == 0:
            sync(device)
    sync(device)
    print(json.dumps({"steps_per_s": n / (time.perf_counter() - t0)}), flush=True)


def solo_rate(s: Suite, spec: Any, shape: tuple[int, ...], seconds: float) -> float:
    """Steps/s of this process training ``spec`` alone on the device (the k = 1 of packing: no other process
    runs meanwhile, so it is what one worker gets)."""
    rule, _, x, y = build(spec, spec.dataset.name, shape, 10, spec.train.batch_size, s.device)
    step_s, _ = timed(step_fn(rule, x, y), s.device, warmup=3, max_steps=10**9, max_s=seconds)
    return 1.0 / step_s


def packed_rate(s: Suite, spec: Any, shape: tuple[int, ...], k: int, seconds: float) -> float:
    """Total steps/s of k processes training ``spec`` at once on the device."""
    if k == 1:
        return solo_rate(s, spec, shape, seconds)
    barrier = s.out / f"barrier-{k}-{time.monotonic_ns()}"
    barrier.mkdir()
    payload = json.dumps({"spec": spec.model_dump(mode="json"), "device": str(s.device), "shape": list(shape),
                          "seconds": seconds, "barrier": str(barrier), "k": k})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    procs = [subprocess.Popen([sys.executable, __file__, "--pack-worker", payload], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(k)]
    rates = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=seconds + 900)
        if proc.returncode != 0:
            raise RuntimeError(f"a packed worker failed: {stderr[-800:]}")
        rates.append(json.loads(stdout.strip().splitlines()[-1])["steps_per_s"])
    shutil.rmtree(barrier, ignore_errors=True)
    return sum(rates)


def run_packing(s: Suite) -> dict:
    cells = dict(table1_cells(s.smoke))
    cases = {"fc": next(v for k, v in cells.items() if k.startswith("bp fc mnist")),
             "lc": next(v for k, v in cells.items() if k.startswith("bp lc cifar10"))}
    if s.smoke:
        cases.pop("lc")
    slots = (1, 2) if s.smoke else PACK_SLOTS
    seconds = 0.5 if s.smoke else 8.0
    out: dict[str, Any] = {"slots": list(slots), "seconds": seconds}
    for name, spec in cases.items():
        shape = (SMOKE_SIZES if s.smoke else SIZES)[spec.dataset.name][0]
        rate = {k: packed_rate(s, spec, shape, k, seconds) for k in slots}
        out[name] = {"steps_per_s": {k: round(v, 1) for k, v in rate.items()},
                     "speedup": {k: round(rate[k] / rate[1], 2) for k in slots}}
    return out


# ---- 6. projection ----------------------------------------------------------------------------------------


def schedule(hours: list[float], slots: int) -> float:
    """Makespan of longest-first list scheduling of ``hours`` onto ``slots`` (what a pool of k workers taking
    the next job when one finishes does, the longest jobs first)."""
    loads = [0.0] * slots
    heapq.heapify(loads)
    for h in sorted(hours, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + h)
    return max(loads)


def run_projection(s: Suite) -> dict:
    cells = s.results.get("table1", {}).get("cells") or []
    if not cells:
        raise RuntimeError("no table1 cells were measured")
    packing = s.results.get("packing", {})
    # table1 has one job per cell (one seed, its own hyperparameters): nothing for stacks to share there; they
    # pay off for seeds and searches (``stacked``)
    out: dict[str, Any] = {"epochs": EPOCHS, "cells": len(cells), "stacked": "table1 has no stackable jobs"}
    for k in packing.get("slots") or [1]:
        hours = []
        for c in cells:
            kind = "fc" if c["arch"] == "fc" else "lc"
            speedup = (packing.get(kind) or packing.get("fc") or {}).get("speedup", {})
            factor = k / float(speedup.get(k, speedup.get(str(k), 1.0 if k == 1 else float("nan"))))
            hours.append(c["cell_hours"] * factor)
        if any(math.isnan(h) for h in hours):
            out[f"jobs_per_gpu_{k}"] = {"hours": None, "why": f"no packing measurement for {k} jobs per GPU"}
            continue
        out[f"jobs_per_gpu_{k}"] = {"hours": round(schedule(hours, k), 2), "sum_of_cells_hours": round(sum(hours), 2),
                                    "longest_cell_hours": round(max(hours), 2)}
    known = [v["hours"] for key, v in out.items() if key.startswith("jobs_per_gpu") and v["hours"] is not None]
    out["best_hours"] = min(known) if known else None
    return out


# ---- 7. stacked runs --------------------------------------------------------------------------------------


def stacked_vs_solo(s: Suite, members: int = 64) -> dict:
    """Stacked runs (issue 13, point 1): M = ``members`` MNIST FC jobs (seeds 0..M-1, lrs apart) as one stacked
    model (``bioscale.stack.Stack``) against M solo runs of the same jobs, for bp, fa and dtp: M x the solo
    step time over the stacked step time is the throughput gain (goal: at least 20x at M = 64 on a GPU)."""
    import torch

    from bioscale.data.base import DataShape
    from bioscale.stack import Stack

    members = 4 if s.smoke else members
    cells = dict(table1_cells(s.smoke))
    shape = (SMOKE_SIZES if s.smoke else SIZES)["mnist"][0]
    seconds = 0.3 if s.smoke else max(2.0, 0.05 * s.left())
    out: dict[str, Any] = {"members": members, "rules": {}}
    for rule_name in ("bp", "fa", "dtp"):
        spec = next(v for k, v in cells.items() if k.startswith(f"{rule_name} fc mnist")
                    or k.startswith(f"{rule_name}/par fc mnist"))
        batch = spec.train.batch_size
        rule, _, x, y = build(spec, "mnist", shape, 10, batch, s.device)
        solo_s, _ = timed(step_fn(rule, x, y), s.device, warmup=2, max_steps=3 if s.smoke else 200, max_s=seconds)
        specs = [spec.model_copy(update={"seed": m, "optim": spec.optim.model_copy(
            update={"lr": spec.optim.lr * (1 + 0.01 * m)})}) for m in range(members)]
        peak_reset(s.device)
        stack = Stack.build(specs, DataShape("mnist", shape, 10, batch * 4, batch), s.device)  # type: ignore[arg-type]
        xs = torch.rand(members, batch, *shape, device=s.device)
        ys = torch.randint(0, 10, (members, batch), device=s.device)
        stacked_s, _ = timed(lambda st=stack, a=xs, b=ys: st.step(a, b), s.device, warmup=2,
                             max_steps=3 if s.smoke else 100,
                             max_s=seconds)
        out["rules"][rule_name] = {"solo_step_ms": round(1e3 * solo_s, 3), "stacked_step_ms": round(1e3 * stacked_s, 3),
                                   "throughput_x": round(members * solo_s / stacked_s, 2),
                                   "peak_gib": peak_gib(s.device)}
        del stack
    gains = ", ".join(f"{r} {v['throughput_x']}x" for r, v in out["rules"].items())
    out["result"] = f"stacked runs, M = {members} MNIST FC jobs as one model vs solo: {gains}"
    return out


# ---- report -----------------------------------------------------------------------------------------------


def ms(phases: dict[str, float]) -> str:
    """{"inverse": 2.7, "forward": 3.2} -> "inverse 2.7 + forward 3.2"; {"train": 2.6} -> "2.6"."""
    if list(phases) == ["train"]:
        return f"{phases['train']:.3g}"
    return " + ".join(f"{p} {v:.3g}" for p, v in phases.items())


def markdown(report: dict) -> str:
    r = report["results"]
    lines = [f"# bioscale GPU suite ({'smoke, CPU' if report['smoke'] else 'GPU'})", "", "```",
             json.dumps(report["provenance"], indent=1), "```", ""]
    cells = r.get("table1", {}).get("cells") or []
    if cells:
        lines += ["## MNIST FC: epoch time per rule (solo, batch 128)", "",
                  "| rule | schedule | step ms (per phase) | epoch s (train) | epoch s (with eval) | 500 epochs h |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in cells:
            if c["dataset"] == "mnist" and c["arch"] == "fc":
                lines.append(f"| {c['rule']} | {c['schedule'] or ''} | {ms(c['step_ms'])} | {c['epoch_train_s']} | "
                             f"{c['epoch_s']} | {c['cell_hours']} |")
        lines += ["", "## CIFAR-10 LC at batch 128 (bp, fa, dtp)", "", "| rule | schedule | step ms | peak GiB |",
                  "| --- | --- | --- | --- |"]
        for c in cells:
            if c["dataset"] == "cifar10" and c["arch"] == "lc" and c["rule"] in ("bp", "fa", "dtp"):
                lines.append(f"| {c['rule']} | {c['schedule'] or ''} | {ms(c['step_ms'])} | {c['peak_gib']} |")
        lines += ["", "## Every table1 cell", "", "| cell | step ms | eval ms | epoch s | 500 epochs h | peak GiB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['label']} | {ms(c['step_ms'])} | {c['eval_ms']} | {c['epoch_s']} | {c['cell_hours']} | "
                  f"{c['peak_gib']} |" for c in cells]
    found = [] if report["smoke"] else goals(r)
    if found:
        lines += ["", "## Goals (issue 13)", "", "| goal | met | measured |", "| --- | --- | --- |"]
        lines += [f"| {name} | {'yes' if ok else 'no'} | {value} |" for name, ok, value in found]
    lines += ["", "## Sections", "", "| section | status | seconds | numbers |", "| --- | --- | --- | --- |"]
    for name, entry in r.items():
        numbers = {k: v for k, v in entry.items() if k not in ("status", "seconds", "traceback", "cells")}
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | `{json.dumps(numbers)}` |")
    return "\n".join(lines) + "\n"


def summary(r: dict, smoke: bool) -> list[str]:
    """The headline numbers, one line each, for the terminal."""
    out = []
    for c in (r.get("table1", {}).get("cells") or []):
        if c["dataset"] == "mnist" and c["arch"] == "fc":
            out.append(f"MNIST FC epoch {c['rule']}{'/' + c['schedule'][:3] if c['schedule'] else ''}: "
                       f"{c['epoch_s']:.3g} s (training {c['epoch_train_s']:.3g} s)")
    for c in (r.get("table1", {}).get("cells") or []):
        if c["dataset"] == "cifar10" and c["arch"] == "lc" and c["rule"] in ("bp", "fa", "dtp"):
            out.append(f"CIFAR LC {c['rule']}{'/' + c['schedule'][:3] if c['schedule'] else ''}: step "
                       f"{ms(c['step_ms'])} ms, peak {c['peak_gib']} GiB")
    lc = r.get("imagenet_lc", {}).get("bp")
    if lc:
        out.append(f"ImageNet LC bp batch 128: {lc}")
    for run in r.get("resnet18", {}).get("runs", []):
        out.append(f"ResNet-18 {run['rule']} amp={run['amp']} channels_last={run['channels_last']}: "
                   f"{run['images_per_s']} images/s")
    if r.get("compile", {}).get("speedup"):
        out.append(f"MNIST FC bp reduce-overhead vs eager: {r['compile']['speedup']}x")
    proj = r.get("projection", {})
    for k in r.get("packing", {}).get("slots") or [1]:
        if proj.get(f"jobs_per_gpu_{k}"):
            out.append(f"table1 projected wall time, {k} job(s) per GPU: {proj[f'jobs_per_gpu_{k}']['hours']} h")
    out.append(r.get("stacked", {}).get("result", "stacked runs: not measured"))
    if smoke:
        out.append("goals: not judged with --smoke (tiny nets on the CPU)")
    else:
        out += [f"goal {name}: {'met' if ok else 'NOT met'} ({value})" for name, ok, value in goals(r)]
    return out


def goals(r: dict) -> list[tuple[str, bool, Any]]:
    """Issue 13's goals that this version measures: (goal, met?, the number)."""
    out = []
    for rule, ratio in r.get("resnet18", {}).get("ratio_to_bp", {}).items():
        out.append((f"ResNet-18 {rule} >= 0.95x bp's images/s", ratio >= 0.95, ratio))
    lc = r.get("imagenet_lc", {}).get("bp") or {}
    if lc.get("fits_16gb") is not None:
        out.append(("ImageNet LC net at batch 128 within 16 GB", bool(lc["fits_16gb"]), lc.get("peak_gib")))
    best = r.get("projection", {}).get("best_hours")
    if best is not None:
        out.append(("table1 in at most 3 hours on this GPU", best <= 3.0, f"{best} h"))
    stacked = r.get("stacked", {})
    for rule, v in (stacked.get("rules") or {}).items():
        out.append((f"stacked M = {stacked['members']} MNIST FC {rule} >= 20x solo throughput",
                    v["throughput_x"] >= 20.0, f"{v['throughput_x']}x"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="on the CPU, tiny nets, CUDA-only parts skipped")
    ap.add_argument("--out", type=Path, default=None, help="default: results/gpu/<UTC time>")
    ap.add_argument("--budget", type=float, default=None, help="seconds the timed sections aim for (420; smoke 30)")
    ap.add_argument("--pack-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pack_worker:
        pack_worker(args.pack_worker)
        return 0
    import torch
    from gpu_checks import provenance

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device here: run with --smoke for the CPU version of this suite", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or REPO / "results" / "gpu" / (stamp + "-suite" + ("-smoke" if args.smoke else ""))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    s = Suite(out, args.smoke, cuda, args.budget or (30.0 if args.smoke else 420.0))
    report: dict[str, Any] = {"smoke": args.smoke, "provenance": provenance(cuda), "results": s.results}
    s.run("table1", lambda: run_table1(s))
    s.run("imagenet_lc", lambda: run_imagenet_lc(s))
    s.run("resnet18", lambda: run_resnet18(s))
    s.run("compile", lambda: run_compile(s), cuda_only=True)
    s.run("packing", lambda: run_packing(s))
    s.run("projection", lambda: run_projection(s))
    s.run("stacked", lambda: stacked_vs_solo(s))
    report["provenance"]["load_average_end"] = os.getloadavg()
    (out / "suite.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "suite.md").write_text(markdown(report))
    if os.environ.get("OUT"):  # the machine's return folder, where there is one
        for name in ("suite.json", "suite.md"):
            shutil.copy(out / name, Path(os.environ["OUT"]) / name)
    print()
    for line in summary(s.results, args.smoke):
        print(line)
    failed = [k for k, v in s.results.items() if v["status"] == "failed"]
    print(f"\n{out / 'suite.md'}: {len(s.results) - len(failed)} of {len(s.results)} sections ok or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
