"""ImageNet loading speed: bioscale's ImageFolder training loader alone, on the CPU, per worker count.

Workload: a generated ImageFolder tree of real JPEGs (PIL, quality 90, random sizes 400-500 x 300-375,
smooth content plus grain so files are ImageNet-like in size and decode cost), cached under
``--root`` (default ``$TMPDIR/bioscale_bench_imagefolder``) and reused by later runs. Measured:

1. Decode cost per image in this process, one thread (what each loader worker pays per image): PIL
   open + convert (``imagenet.read_rgb``), then + RandomResizedCrop(224) + flip, + ToTensor, + Normalize
   (the whole ``xiao`` train transform), the same read through ``SeededDataset`` (per-image reseeding), and,
   for comparison, the crop ending in a uint8 tensor (``PILToTensor``: no float conversion or normalising
   on the CPU); then the collate a worker does (one stack of a batch into shared memory), float32 against
   uint8. Median per image over interleaved rounds.
2. bioscale's training loader: ``imagenet.load(ImageNetParams(root, preprocess="xiao"), LoaderSettings(...,
   num_workers=W))`` -> ``bundle.train`` (a ``DeviceDataLoader``: DataLoader workers, persistent, handing over
   uint8 crops that ``imagenet.ToFloat`` normalises in the main process, the "device"), iterated to the end on
   the CPU device (so no pinned memory), for each W in ``--workers``. The first epoch of a fresh
   loader (worker start-up included; a new loader per round) is timed apart from later epochs of one loader
   (persistent workers, ``set_epoch`` between epochs). Rounds interleave the worker counts; medians.

From (1) and (2): images/s per worker, and how many workers (= free CPU cores) one GPU needs at a given
training rate. The GPU rates in the last table are assumptions to read the numbers against, not measurements.
Run: ``python benchmarks/bench_imagefolder.py [--workers 0,1,2] [--batch-size 128] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bioscale.data import LoaderSettings, imagenet
from bioscale.data.loaders import MAX_AUTO_WORKERS, SeededDataset, resolve_workers
from bioscale.spec import TrainSpec

# Training rates (images/s per GPU) to size the workers against. ASSUMED, not measured here: roughly the
# range a ResNet-18 / AlexNet step (batch 256) runs at on one current datacenter GPU, depending on the rule,
# AMP and torch.compile. Override with --gpu-rates.
ASSUMED_GPU_RATES = (1000, 2500, 5000)


def generate(root: Path, classes: int, per_class: int, val_per_class: int, seed: int = 0) -> dict:
    """Write root/{train,val}/<class>/*.JPEG once; a later call with the same layout reuses it."""
    layout = {"classes": classes, "per_class": per_class, "val_per_class": val_per_class, "seed": seed, "v": 1}
    marker = root / "layout.json"
    if marker.is_file() and json.loads(marker.read_text()).get("layout") == layout:
        return json.loads(marker.read_text())
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes, nbytes = [], 0
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(400, 501)), int(rng.integers(300, 376))
                # Smooth colour blobs (a 12x upsampled random image) plus grain: JPEG files of roughly the
                # size and entropy of photographs, unlike pure noise (far bigger) or flat colour (far smaller).
                small = rng.integers(0, 256, (h // 12 + 1, w // 12 + 1, 3), dtype=np.uint8)
                base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
                grain = rng.normal(0, 24, (h, w, 3)).astype(np.int16)
                path = d / f"img_{i:05d}.JPEG"
                Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
                sizes.append((w, h))
                nbytes += path.stat().st_size
    info = {"layout": layout, "images": len(sizes), "mean_kb": nbytes / len(sizes) / 1024,
            "mean_w": float(np.mean([s[0] for s in sizes])), "mean_h": float(np.mean([s[1] for s in sizes]))}
    marker.write_text(json.dumps(info))
    return info


def decode_costs(root: Path, rounds: int, limit: int, batch_size: int) -> dict[str, float]:
    """Median seconds per image of each preprocessing stage, in this process, interleaved rounds."""
    from torchvision import transforms as T

    train_ds, _ = imagenet.image_folders(imagenet.ImageNetParams(root=str(root)))
    paths = [p for p, _ in train_ds.samples][:limit]
    full = imagenet.transforms("xiao", True)  # RRC(224), flip, ToTensor, Normalize
    crop = T.Compose(full.transforms[:2])
    crop_tensor = T.Compose(full.transforms[:3])
    crop_uint8 = T.Compose([*full.transforms[:2], T.PILToTensor()])
    train_ds.transform = full
    seeded = SeededDataset(train_ds, seed=0)
    n = len(paths)
    stages: dict[str, Callable[[int], object]] = {
        "read_rgb (open + decode + RGB)": lambda i: imagenet.read_rgb(paths[i]),
        "  + RandomResizedCrop + flip": lambda i: crop(imagenet.read_rgb(paths[i])),
        "  + ToTensor (float)": lambda i: crop_tensor(imagenet.read_rgb(paths[i])),
        "  + Normalize (= xiao train)": lambda i: full(imagenet.read_rgb(paths[i])),
        "  via SeededDataset[(epoch, i)]": lambda i: seeded[(0, i)],
        "crop -> uint8 (PILToTensor)": lambda i: crop_uint8(imagenet.read_rgb(paths[i])),
    }
    for i in range(n):  # warm the page cache and PIL
        stages["read_rgb (open + decode + RGB)"](i)
    # Interleaved image by image (every stage on image i, then image i+1), so a burst of load elsewhere on
    # the machine hits all stages alike; the median over rounds of each stage's mean per image.
    times: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(rounds):
        total = dict.fromkeys(stages, 0.0)
        for i in range(n):
            for name, fn in stages.items():
                t = time.perf_counter()
                fn(i)
                total[name] += time.perf_counter() - t
        for name in stages:
            times[name].append(total[name] / n)
    # What a worker does next: stack the batch into shared memory (DataLoader's default_collate in a worker).
    floats = [full(imagenet.read_rgb(paths[i % n])) for i in range(batch_size)]
    uint8s = [crop_uint8(imagenet.read_rgb(paths[i % n])) for i in range(batch_size)]
    collate = {"collate into shm, float32 (per img)": floats, "collate into shm, uint8 (per img)": uint8s}
    for name in collate:
        times[name] = []
    for _ in range(rounds):
        for name, batch in collate.items():
            t = time.perf_counter()
            shared_stack(batch)
            times[name].append((time.perf_counter() - t) / batch_size)
    return {k: statistics.median(v) for k, v in times.items()}


def shared_stack(batch: list[torch.Tensor]) -> torch.Tensor:
    """``default_collate`` of tensors inside a worker: one stack into a fresh shared-memory block."""
    elem = batch[0]
    storage = elem._typed_storage()._new_shared(sum(x.numel() for x in batch), device=elem.device)
    out = elem.new(storage).resize_(len(batch), *elem.size())
    return torch.stack(batch, 0, out=out)


def make_loader(root: Path, workers: int, batch_size: int):
    ctx = LoaderSettings(batch_size=batch_size, eval_batch_size=batch_size, device=torch.device("cpu"), seed=0,
                         num_workers=workers)
    return imagenet.load(imagenet.ImageNetParams(root=str(root), preprocess="xiao"), ctx).train


def run_epoch(loader, epoch: int) -> tuple[float, float, int]:
    """(seconds to the first batch, seconds for the whole epoch, images)."""
    loader.set_epoch(epoch)
    t = time.perf_counter()
    first = None
    n = 0
    for x, _ in loader:
        if first is None:
            first = time.perf_counter() - t
        n += len(x)
    return first or 0.0, time.perf_counter() - t, n


def loader_rates(root: Path, workers: list[int], batch_size: int, first_rounds: int, rounds: int
                 ) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, list[float]]] = {w: {"first_batch": [], "first": [], "steady": []} for w in workers}
    n_images = 0
    # First epoch of a fresh loader: worker processes start, ImageFolder's file list is pickled to them.
    for _ in range(first_rounds):
        for w in workers:
            loader = make_loader(root, w, batch_size)
            fb, dt, n_images = run_epoch(loader, 0)
            out[w]["first_batch"].append(fb)
            out[w]["first"].append(n_images / dt)
            del loader  # shuts its workers down
    # Later epochs: one loader per worker count, kept alive across rounds (persistent workers).
    live = {w: make_loader(root, w, batch_size) for w in workers}
    for w in workers:
        run_epoch(live[w], 0)  # start the workers
    for r in range(rounds):
        for w in workers:
            _, dt, n_images = run_epoch(live[w], r + 1)
            out[w]["steady"].append(n_images / dt)
    del live
    return {w: {**{k: statistics.median(v) for k, v in d.items()}, "steady_min": min(d["steady"]),
                "steady_max": max(d["steady"])} for w, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "bioscale_bench_imagefolder"))
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--per-class", type=int, default=32, help="training images per class")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of steady-state epochs")
    ap.add_argument("--first-rounds", type=int, default=3, help="rounds of fresh-loader first epochs")
    ap.add_argument("--decode-rounds", type=int, default=3)
    ap.add_argument("--decode-images", type=int, default=256)
    ap.add_argument("--gpu-rates", default=",".join(map(str, ASSUMED_GPU_RATES)),
                    help="ASSUMED training rates (images/s per GPU) to size the workers against")
    args = ap.parse_args()
    torch.set_num_threads(1)  # DataLoader workers run with one thread too
    workers = [int(w) for w in args.workers.split(",")]
    gpu_rates = [float(r) for r in args.gpu_rates.split(",")]
    root = Path(args.root)
    load_start = os.getloadavg()

    t0 = time.perf_counter()
    info = generate(root, args.classes, args.per_class, 2)
    t_gen = time.perf_counter() - t0
    decode = decode_costs(root, args.decode_rounds, args.decode_images, args.batch_size)
    rates = loader_rates(root, workers, args.batch_size, args.first_rounds, args.rounds)

    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()
    print(f"CPU cores available: {cores}   load average (1/5/15 min) at the start: "
          f"{' '.join(f'{v:.2f}' for v in load_start)}, at the end: {' '.join(f'{v:.2f}' for v in load)}   "
          f"torch {torch.__version__}, main-process threads {torch.get_num_threads()}")
    print(f"ImageFolder: {info['images']} JPEGs under {root} ({args.classes} classes x {args.per_class} train + 2 "
          f"val), mean {info['mean_w']:.0f}x{info['mean_h']:.0f} px, {info['mean_kb']:.0f} KB, quality 90 "
          f"({'generated' if t_gen > 1 else 'cached'}, {t_gen:.1f} s)")

    full = decode["  + Normalize (= xiao train)"]
    print(f"\n{'decode in this process (1 thread)':34s} {'ms/image':>9s} {'images/s':>9s} {'x xiao':>7s}")
    for name, s in decode.items():
        print(f"{name:34s} {s * 1e3:9.2f} {1 / s:9.0f} {s / full:7.2f}")

    base = rates[workers[0]]["steady"]
    print(f"\nbioscale train loader (imagenet.load(..., preprocess='xiao').train), batch {args.batch_size}, "
          f"CPU device, medians of {args.first_rounds} first / {args.rounds} steady epochs")
    print(f"{'workers':>7s} {'1st batch s':>12s} {'1st epoch img/s':>16s} {'steady img/s':>13s} "
          f"{'ratio':>6s} {'img/s per worker':>17s} {'steady min-max':>15s}")
    for w in workers:
        r = rates[w]
        per = r["steady"] / max(w, 1)
        print(f"{w:7d} {r['first_batch']:12.2f} {r['first']:16.0f} {r['steady']:13.0f} {r['steady'] / base:6.2f} "
              f"{per:17.0f} {r['steady_min']:7.0f}-{r['steady_max']:<7.0f}")

    # Per-worker rate: one worker's steady rate (it includes collate and the hand-over to the main process);
    # the decode-only rate is the ceiling.
    per_image = full + decode["collate into shm, float32 (per img)"]
    per_image_u8 = decode["crop -> uint8 (PILToTensor)"] + decode["collate into shm, uint8 (per img)"]
    per_worker = rates[1]["steady"] if 1 in rates else 1 / per_image
    default = max(1, resolve_workers(TrainSpec().num_workers))
    print(f"\nworkers one GPU needs (one free core each) at {per_worker:.0f} img/s per worker "
          f"(measured, 1 worker; transform + collate in this process: {1 / per_image:.0f}/s)")
    print(f"{'GPU trains at (ASSUMED) img/s':>30s} {'workers needed':>15s} "
          f"{f'default {default} workers':>18s} {'xiao2018 grid 8':>16s}")
    for g in gpu_rates:
        need = math.ceil(g / per_worker)
        print(f"{g:30.0f} {need:15d} {min(1.0, default * per_worker / g):17.0%} {min(1.0, 8 * per_worker / g):15.0%}")
    print(f"(last two columns: share of the assumed GPU rate the workers can feed, if each has a core of this "
          f"machine's speed; TrainSpec.num_workers = {TrainSpec().num_workers!r} = {default} per job here, which is "
          f"one GPU or one DDP rank: auto_workers() = min({MAX_AUTO_WORKERS}, CPUs of the rank - 1))")
    print(f"default {default} workers feed about {default * per_worker:.0f} img/s per GPU, the grid's 8 about "
          f"{8 * per_worker:.0f} img/s. The xiao train transform costs {full * 1e3:.2f} ms/image on one core: "
          f"JPEG decode {decode['read_rgb (open + decode + RGB)'] / full:.0%}, crop + flip "
          f"{(decode['  + RandomResizedCrop + flip'] - decode['read_rgb (open + decode + RGB)']) / full:.0%}, "
          f"ToTensor + Normalize {(full - decode['  + RandomResizedCrop + flip']) / full:.0%}; collating float32 "
          f"adds {decode['collate into shm, float32 (per img)'] * 1e3:.2f} ms. The loader hands over uint8 crops "
          f"(ToFloat normalises on the device): {per_image_u8 * 1e3:.2f} instead of {per_image * 1e3:.2f} "
          f"ms/image in a worker ({per_image / per_image_u8:.2f}x the images/s per worker, 1/4 of the shared and "
          "pinned memory).")


if __name__ == "__main__":
    main()
