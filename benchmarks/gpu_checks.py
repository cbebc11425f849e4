"""The GPU checks of issue 12, as one run: ``bash benchmarks/gpu_checks.sh`` (which calls this file).

On one GPU (an H200 takes about 3-4 minutes):

1. ``ddp``: one job (ResNet-18 with batch norm, FA, synthetic 3x32x32 data) run three ways and compared
   epoch by epoch: in this process without torch.distributed; as a 1-rank torchrun job (NCCL, the DDP path:
   gradient all-reduce, replica checks, metrics summed over the ranks); and as a 1-rank torchrun job with
   ``sync_bn`` (``GlobalBatchNorm`` on the GPU, which for one rank must equal torch's batch norm).
2. ``packed``: a grid of 8 small jobs through the local executor with ``--jobs-per-gpu 4`` and with 1
   (wall time, jobs per minute, every job done, each worker pinned with CUDA_VISIBLE_DEVICES).
3. ``amp``: the ResNet-18 job with ``train.amp`` (bfloat16 autocast) against float32: seconds per epoch and
   losses.
4. ``imagefolder``: a generated ImageFolder of JPEGs loaded onto the GPU (``num_workers: auto``, pinned
   memory, uint8 to the device, ``ToFloat`` there): the batches equal torchvision's ToTensor + Normalize on
   the CPU, and the loader's images/s.

``--smoke`` runs the same code on the CPU, smaller (gloo instead of NCCL, CPU slots instead of packed
GPUs, an ImageFolder on the CPU device) and skips what only CUDA has (AMP, pinned memory), saying so; a test
runs it. Results: ``results/gpu/<UTC time>/checks.json`` (every number, with provenance: commit, host,
GPU, torch, load average) and ``checks.md``; also copied to ``$OUT`` when that is set (the device machine's
return folder). Exit code 1 when a check failed, 0 otherwise (skipped checks included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOL = 1e-4
"""Largest difference allowed between losses of runs that must compute the same (float32 on a GPU, cuDNN
algorithms may differ between processes)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def sh(cmd: list[str], timeout: float, log: Path) -> float:
    """Run ``cmd`` (output to ``log``), raise if it fails; returns its wall time."""
    start = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=REPO, timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"exit code {proc.returncode}: {' '.join(cmd[:6])} ...\n" + "\n".join(tail))
    return time.perf_counter() - start


def bioscale(*args: str) -> list[str]:
    return [sys.executable, "-m", "bioscale", *args]


def job_dirs(results: Path, grid: str) -> list[Path]:
    return sorted(p for p in (results / grid).iterdir() if p.is_dir() and not p.name.startswith("."))


def metrics(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def max_diff(a: list[dict], b: list[dict], keys: tuple[str, ...] = ("train_loss", "test_loss")) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in keys)


class Checks:
    def __init__(self, out: Path, smoke: bool, cuda: bool) -> None:
        self.out, self.smoke, self.cuda = out, smoke, cuda
        self.log = out / "commands.log"
        self.results: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], dict], cuda_only: bool = False) -> None:
        if cuda_only and not self.cuda:
            why = "--smoke: CUDA-only, skipped" if self.smoke else "no CUDA device: skipped"
            self.results[name] = {"status": "skipped", "why": why}
            print(f"[{name}] {why}", flush=True)
            return
        print(f"[{name}] running ...", flush=True)
        start = time.perf_counter()
        try:
            entry = {"status": "ok", **fn()}
            if entry.get("problems"):
                entry["status"] = "failed"
        except Exception as exc:
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=-4)}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.results[name] = entry
        shown = {k: v for k, v in entry.items() if k != "traceback"}
        print(f"[{name}] {json.dumps(shown, default=str)}", flush=True)


def resnet_grid(device: str, smoke: bool, name: str) -> dict:
    size, epochs = (32, 2) if smoke else (2048, 3)
    return {"name": name, "base": {
        "dataset": {"name": "synthetic", "params": {"train_size": size, "test_size": size // 2,
                                                   "shape": [3, 32, 32]}},
        "arch": "resnet18", "rule": "fa", "optim": {"name": "sgd", "lr": 0.01},
        "train": {"epochs": epochs, "batch_size": 16 if smoke else 256, "eval_batch_size": 256,
                  "device": device, "diagnostics_every": 0}}}


def write_grid(path: Path, grid: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def check_ddp(c: Checks, device: str) -> dict:
    """One process vs 1-rank torchrun (NCCL on CUDA, gloo on the CPU), with and without global batch norm."""
    from bioscale.distributed import job_payload
    from bioscale.grid import resolve
    from bioscale.job import Job

    work = c.out / "ddp"
    work.mkdir()
    grid = resnet_grid(device, c.smoke, "ddp")
    plain = sh(bioscale("run", str(write_grid(work / "ddp.yaml", grid)), "--results", str(work / "single"), "-q"),
               900, c.log)
    (single,) = job_dirs(work / "single", "ddp")
    out: dict[str, Any] = {"arch": grid["base"]["arch"], "device": device, "single_s": round(plain, 1)}
    problems = []
    for sync_bn in (False, True):
        raw = {**grid["base"], "train": {**grid["base"]["train"], "distributed": {"sync_bn": sync_bn}}}
        spec = resolve(raw)
        job_file = work / f"job-sync{int(sync_bn)}.json"
        job_file.write_text(json.dumps(job_payload(Job("ddp", spec, "ddp"))))
        results = work / f"rank1-sync{int(sync_bn)}"
        seconds = sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
                      "-m", "bioscale.worker", str(job_file), str(results)], 900, c.log)
        (run,) = job_dirs(results, "ddp")
        result = json.loads((run / "result.json").read_text())
        diff = max_diff(metrics(single), metrics(run))
        key = "global_bn" if sync_bn else "ddp"
        out[key] = {"seconds": round(seconds, 1), "status": result["status"],
                    "device": result["provenance"]["device"], "max_loss_diff_vs_single": diff}
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if result["status"] != "done" or backend not in (result["provenance"]["device"] or "") or diff > TOL:
            problems.append(f"{key}: {out[key]} (expected done, {backend}, diff <= {TOL})")
    out["problems"] = problems
    return out


def small_grid(device: str, smoke: bool) -> dict:
    return {"name": "packed", "base": {
        "dataset": {"name": "synthetic", "params": {"train_size": 512 if smoke else 4096, "test_size": 256,
                                                   "shape": [1, 28, 28]}},
        "arch": {"name": "fc", "params": {"hidden": [256, 256]}}, "rule": "fa", "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 2 if smoke else 5, "batch_size": 64, "eval_batch_size": 1000, "device": device,
                  "diagnostics_every": 0}},
        "axes": {"rule.name": ["bp", "fa"], "seed": [0, 1] if smoke else [0, 1, 2, 3]}}


def check_packed(c: Checks, device: str) -> dict:
    """The local executor: jobs packed 4 to the GPU against 1 per GPU (on the CPU: 2 CPU slots)."""
    work = c.out / "packed"
    work.mkdir()
    grid = write_grid(work / "packed.yaml", small_grid(device, c.smoke))
    runs = [("jobs_per_gpu_4", ["--jobs-per-gpu", "4"]), ("jobs_per_gpu_1", ["--jobs-per-gpu", "1"])]
    if not c.cuda:
        runs = [("cpu_workers_2", ["--workers", "2"])]
    out: dict[str, Any] = {"device": device}
    problems = []
    for name, flags in runs:
        results = work / name
        seconds = sh(bioscale("run", str(grid), "--results", str(results), "--executor", "local", *flags, "-q"),
                     900, c.log)
        dirs = job_dirs(results, "packed")
        status = [json.loads((d / "result.json").read_text())["status"] for d in dirs]
        devices = sorted({json.loads((d / "result.json").read_text())["provenance"]["device"] for d in dirs})
        out[name] = {"jobs": len(dirs), "seconds": round(seconds, 1), "done": status.count("done"),
                     "jobs_per_min": round(60 * len(dirs) / seconds, 1), "devices": devices}
        if status.count("done") != len(dirs) or not dirs:
            problems.append(f"{name}: statuses {status}")
    if "jobs_per_gpu_1" in out:
        out["speedup_4_over_1"] = round(out["jobs_per_gpu_1"]["seconds"] / out["jobs_per_gpu_4"]["seconds"], 2)
    out["problems"] = problems
    return out


def check_amp(c: Checks, device: str) -> dict:
    """bfloat16 autocast against float32 on the ResNet-18 job: epoch times and losses."""
    work = c.out / "amp"
    work.mkdir()
    out: dict[str, Any] = {}
    for amp in (False, True):
        grid = resnet_grid(device, c.smoke, "amp")
        grid["base"]["train"]["amp"] = amp
        results = work / f"amp{int(amp)}"
        sh(bioscale("run", str(write_grid(work / f"amp{int(amp)}.yaml", grid)), "--results", str(results), "-q"),
           900, c.log)
        (run,) = job_dirs(results, "amp")
        rows = metrics(run)
        out["bf16" if amp else "fp32"] = {"epoch_s": [round(r.get("epoch_time_s", 0.0), 2) for r in rows],
                                          "train_loss": [round(r["train_loss"], 4) for r in rows],
                                          "status": json.loads((run / "result.json").read_text())["status"]}
    fp, bf = out["fp32"], out["bf16"]
    out["speedup_last_epoch"] = round(fp["epoch_s"][-1] / max(bf["epoch_s"][-1], 1e-9), 2)
    out["problems"] = [f"{k}: {v['status']}" for k, v in (("fp32", fp), ("bf16", bf)) if v["status"] != "done"]
    return out


def check_imagefolder(c: Checks, device: str) -> dict:
    """uint8 crops to the device + ToFloat there == ToTensor + Normalize on the CPU; loader images/s."""
    import torch
    from torchvision.datasets import ImageFolder

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_imagefolder import generate

    from bioscale.data import LoaderSettings, imagenet
    from bioscale.data.loaders import DeviceDataLoader, resolve_workers

    root = c.out / "imagefolder"
    generate(root, classes=4, per_class=8 if c.smoke else 64, val_per_class=4 if c.smoke else 16)
    ctx = LoaderSettings(32, 64, torch.device(device), seed=0, num_workers="auto")
    bundle = imagenet.load(imagenet.ImageNetParams(root=str(root)), ctx)
    val = ImageFolder(str(root / "val"), loader=imagenet.read_rgb, transform=imagenet.transforms("xiao", False))
    reference = DeviceDataLoader(val, 64, torch.device("cpu"))
    diff = 0.0
    for (x, y), (xr, yr) in zip(bundle.test, reference, strict=True):
        assert x.device.type == torch.device(device).type and torch.equal(y.cpu(), yr)
        diff = max(diff, (x.cpu() - xr).abs().max().item())
    out: dict[str, Any] = {"device": device, "num_workers_auto": resolve_workers("auto"),
                           "pin_memory": bundle.train.loader.pin_memory, "max_diff_vs_cpu_float": diff}
    for epoch in range(2):  # epoch 0 starts the workers; epoch 1 is the steady rate
        bundle.train.set_epoch(epoch)
        start, n = time.perf_counter(), 0
        for x, _ in bundle.train:
            n += len(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out[f"epoch{epoch}_images_per_s"] = round(n / (time.perf_counter() - start), 1)
    out["problems"] = [f"batches differ by {diff}"] if diff > 1e-5 else []
    return out


def provenance(cuda: bool) -> dict:
    import torch

    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "when_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": run(["git", "rev-parse", "HEAD"]) or "unknown (no git here)",
        "dirty": bool(run(["git", "status", "--porcelain"])),
        "host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "nvidia_smi": run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
        if shutil.which("nvidia-smi") else None,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg(),
    }


def markdown(report: dict) -> str:
    lines = [f"# bioscale GPU checks ({'smoke, CPU' if report['smoke'] else 'GPU'})", "",
             "```", json.dumps(report["provenance"], indent=1), "```", "", "| check | status | seconds | numbers |",
             "| --- | --- | --- | --- |"]
    for name, entry in report["checks"].items():
        numbers = {k: v for k, v in entry.items() if k not in ("status", "seconds", "traceback", "problems")}
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | `{json.dumps(numbers)}` |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="on the CPU, small, CUDA-only parts skipped")
    ap.add_argument("--out", type=Path, default=None, help="default: results/gpu/<UTC time>")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device here: run with --smoke for the CPU version of these checks", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or REPO / "results" / "gpu" / (stamp + ("-smoke" if args.smoke else ""))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda else "cpu"
    c = Checks(out, args.smoke, cuda)
    report: dict[str, Any] = {"smoke": args.smoke, "provenance": provenance(cuda), "checks": c.results}
    c.run("ddp", lambda: check_ddp(c, device))
    c.run("packed", lambda: check_packed(c, device))
    c.run("amp", lambda: check_amp(c, device), cuda_only=True)
    c.run("imagefolder", lambda: check_imagefolder(c, device))
    (out / "checks.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "checks.md").write_text(markdown(report))
    for name in ("checks.json", "checks.md"):  # the machine's return folder, where there is one
        if os.environ.get("OUT"):
            shutil.copy(out / name, Path(os.environ["OUT"]) / name)
    if os.environ.get("OUT"):
        shutil.copy(c.log, Path(os.environ["OUT"]) / "commands.log")
    for subdir in ("ddp", "packed", "amp", "imagefolder"):  # keep the numbers, not the data and checkpoints
        shutil.rmtree(out / subdir, ignore_errors=True)
    failed = [k for k, v in c.results.items() if v["status"] == "failed"]
    print(f"\n{out / 'checks.md'}: {len(c.results) - len(failed)} of {len(c.results)} checks ok or skipped"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
