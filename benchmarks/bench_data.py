"""Data loading speed: the device-resident ``TensorLoader`` against torch DataLoaders over the same data.

Workload: one training epoch of Bartunov et al.'s MNIST FC net (5 x 256 tanh, BP, Adam 1e-3, batch 128)
on Fashion-MNIST (60,000 images), and the same passes with no model ("loader only"). Compared:

- ``TensorLoader``: bioscale's loader (whole set on the device, one randperm per epoch);
- ``DataLoader(TensorDataset)``: torch's DataLoader over the very same tensors (per-item fetch + collate);
- ``torchvision FashionMNIST``: the usual torchvision pipeline (IDX -> PIL -> ToTensor per image).

Also the time to load the dataset (bioscale's IDX reader vs torchvision's dataset constructor).
Run: ``python benchmarks/bench_data.py [--device cuda] [--threads 1] [--workers 0] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from bioscale.data import LoaderSettings, mnist
from bioscale.data.params import DownloadParams
from bioscale.models.presets import FCParams, build_fc
from bioscale.rules.base import BPParams
from bioscale.rules.bp import BP
from bioscale.spec import OptimSpec

SYSTEM = Path("/usr/share/datasets/fashion-mnist")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torchvision_root(tmp: Path) -> Path:
    """torchvision's FashionMNIST wants uncompressed files in root/FashionMNIST/raw."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for src in SYSTEM.glob("*.gz"):
        with gzip.open(src) as f, open(raw / src.name[:-3], "wb") as out:
            shutil.copyfileobj(f, out)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision import datasets, transforms

    ctx = LoaderSettings(batch_size=128, eval_batch_size=1000, device=device, seed=0)

    def load_ours(root: str | None = None) -> object:
        mnist._cache.clear()
        return mnist.load_fashion_mnist(DownloadParams(root=root), ctx)

    with tempfile.TemporaryDirectory() as tmp:
        tv_root = torchvision_root(Path(tmp))
        t_load_ours = timed(load_ours, device, args.repeats)
        t_load_raw = timed(lambda: load_ours(str(tv_root)), device, args.repeats)
        t_load_tv = timed(lambda: datasets.FashionMNIST(str(tv_root), train=True, transform=transforms.ToTensor()),
                          device, args.repeats)
        bundle = load_ours()
        tv = datasets.FashionMNIST(str(tv_root), train=True, transform=transforms.ToTensor())
        pin = device.type == "cuda"
        x_cpu, y_cpu = bundle.train.x.cpu(), bundle.train.y.cpu()
        dl_kw = dict(batch_size=128, shuffle=True, num_workers=args.workers, pin_memory=pin,
                     persistent_workers=args.workers > 0)
        loaders: dict[str, Iterable] = {
            "TensorLoader (bioscale)": bundle.train,
            "DataLoader(TensorDataset)": DataLoader(TensorDataset(x_cpu, y_cpu), **dl_kw),
            "torchvision FashionMNIST": DataLoader(tv, **dl_kw),
        }

        def to_dev(batches: Iterable) -> Iterable:
            for x, y in batches:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        rows = []
        for name, loader in loaders.items():
            src = (lambda ld=loader: ld) if name.startswith("TensorLoader") else (lambda ld=loader: to_dev(ld))

            def loader_only(src: Callable = src) -> None:
                n = 0
                for x, _ in src():
                    n += len(x)
                assert n == len(x_cpu)

            torch.manual_seed(0)
            rule = BP(BPParams(), OptimSpec(name="adam", lr=1e-3))
            rule.prepare(build_fc(FCParams(), bundle.info).to(device))
            rule.setup(device)

            def epoch(src: Callable = src, rule: BP = rule) -> None:
                for x, y in src():
                    rule.train_step(x, y)

            rows.append((name, timed(loader_only, device, args.repeats), timed(epoch, device, args.repeats)))

    base_only, base_epoch = rows[0][1], rows[0][2]
    print(f"device={device} threads={torch.get_num_threads()} workers={args.workers} repeats={args.repeats} "
          f"(median wall times)")
    print(f"{'loader':28s} {'loader only s':>14s} {'ratio':>7s} {'train epoch s':>14s} {'ratio':>7s}")
    for name, only, ep in rows:
        print(f"{name:28s} {only:14.3f} {only / base_only:7.2f} {ep:14.3f} {ep / base_epoch:7.2f}")
    print(f"\n{'load the 60k training set':28s} {'s':>14s} {'ratio':>7s}")
    print(f"{'bioscale, IDX .gz -> device':28s} {t_load_ours:14.3f} {1.0:7.2f}")
    print(f"{'bioscale, raw IDX -> device':28s} {t_load_raw:14.3f} {t_load_raw / t_load_ours:7.2f}")
    print(f"{'torchvision, raw IDX':28s} {t_load_tv:14.3f} {t_load_tv / t_load_ours:7.2f}")
    print("(torchvision needs the files gunzipped beforehand; bioscale's loads include float conversion on the device)")


if __name__ == "__main__":
    main()
