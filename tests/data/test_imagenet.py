"""imagenet: an ImageFolder tree of tiny PNG/JPEG files and downsampled npz batches written by the test."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bioscale.data import imagenet
from bioscale.data.imagenet import ImageNetParams
from bioscale.errors import DataError

CLASSES = ["n01", "n02", "n03"]


def write_tree(root: Path, per_class: int = 4) -> dict[str, list[Path]]:
    """train/ and val/ with one folder per class; mixed PNG/JPEG, odd sizes, solid colours."""
    rng = np.random.default_rng(0)
    files: dict[str, list[Path]] = {"train": [], "val": []}
    for split in ("train", "val"):
        for ci, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                w, h = int(rng.integers(30, 60)), int(rng.integers(30, 60))
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                ext = "png" if (i + ci) % 2 else "jpg"
                p = root / split / c / f"{i}.{ext}"
                img.save(p)
                files[split].append(p)
    return files


def test_bartunov_is_plain_resize_to_224(tmp_path: Path, ctx) -> None:
    write_tree(tmp_path)
    b = imagenet.load(ImageNetParams(root=str(tmp_path), preprocess="bartunov"), ctx)
    assert b.info.family == "imagenet" and b.info.input_shape == (3, 224, 224) and b.info.num_classes == 3
    assert (b.info.train_size, b.info.test_size) == (12, 12)
    x, y = next(iter(b.test))
    assert x.shape == (12, 3, 224, 224) and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # Independent: PIL bilinear resize of the first val image (ImageFolder's sorted order), / 255.
    first = sorted((tmp_path / "val" / "n01").iterdir())[0]
    ref = np.asarray(Image.open(first).convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    torch.testing.assert_close(x[0], torch.from_numpy(ref).permute(2, 0, 1), atol=1 / 255 + 1e-6, rtol=0)
    # No augmentation: the training loader shows the same pixels as the eval pass, only reordered.
    xs = torch.cat([xb for xb, _ in b.train])
    xe = torch.cat([xb for xb, _ in b.train_eval])
    assert torch.allclose(xs.sum(), xe.sum())


def test_xiao_val_is_center_crop_normalised(tmp_path: Path, ctx) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    colour = (200, 100, 30)
    Image.new("RGB", (300, 260), colour).save(tmp_path / "train" / "a" / "0.png")
    Image.new("RGB", (300, 260), colour).save(tmp_path / "val" / "a" / "0.png")
    b = imagenet.load(ImageNetParams(root=str(tmp_path), preprocess="xiao"), ctx)
    x, _ = next(iter(b.test))
    assert x.shape == (1, 3, 224, 224)
    for c in range(3):
        expect = (colour[c] / 255 - imagenet.MEAN[c]) / imagenet.STD[c]
        torch.testing.assert_close(x[0, c], torch.full((224, 224), expect), atol=1e-5, rtol=0)


def test_xiao_train_augmentation_repeats_per_epoch_and_worker_count(tmp_path: Path, ctx) -> None:
    write_tree(tmp_path, per_class=3)
    p = ImageNetParams(root=str(tmp_path), preprocess="xiao")
    a = imagenet.load(p, ctx)
    b = imagenet.load(p, replace(ctx, num_workers=2))

    def epoch(loader, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        loader.set_epoch(e)
        xs, ys = zip(*list(loader), strict=True)
        return torch.cat(xs), torch.cat(ys)

    x0, y0 = epoch(a.train, 0)
    x0b, y0b = epoch(b.train, 0)
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)  # same crops whichever worker reads an image
    x1, y1 = epoch(a.train, 1)
    assert sorted(y0.tolist()) == sorted(y1.tolist()) == sorted([0, 1, 2] * 3)
    assert not torch.equal(x0, x1)
    assert torch.equal(epoch(a.train, 0)[0], x0)


def test_subset_is_stratified(tmp_path: Path, ctx) -> None:
    write_tree(tmp_path, per_class=4)
    b = imagenet.load(ImageNetParams(root=str(tmp_path), preprocess="bartunov", subset=6), ctx)
    assert b.info.train_size == 6
    assert sorted(torch.cat([y for _, y in b.train_eval]).tolist()) == [0, 0, 1, 1, 2, 2]


def test_missing_root_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no dataset.params.root given.*cannot be downloaded automatically"):
        imagenet.load(ImageNetParams(), None)  # type: ignore[arg-type]
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"expected the folder .*val with one sub-folder of images per class"):
        imagenet.image_folders(ImageNetParams(root=str(tmp_path)))


def test_class_mismatch(tmp_path: Path) -> None:
    for split, c in (("train", "a"), ("val", "b")):
        (tmp_path / split / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    with pytest.raises(DataError, match="different class folders"):
        imagenet.image_folders(ImageNetParams(root=str(tmp_path)))


def test_corrupt_image_names_the_file(tmp_path: Path, ctx) -> None:
    files = write_tree(tmp_path, per_class=1)
    bad = files["val"][1]
    bad.write_bytes(bad.read_bytes()[:20])
    b = imagenet.load(ImageNetParams(root=str(tmp_path), preprocess="bartunov"), ctx)
    with pytest.raises(DataError, match=f"cannot decode the image {bad}"):
        list(b.test)


# Downsampled npz batches ---------------------------------------------------------------------------


def write_npz(root: Path, size: int, n_batches: int = 2, n: int = 12, compressed: bool = False) -> tuple:
    rng = np.random.default_rng(1)
    save = np.savez_compressed if compressed else np.savez
    xs, ys = [], []
    for i in range(1, n_batches + 1):
        x = rng.integers(0, 256, (n, 3 * size * size), dtype=np.uint8)
        y = rng.integers(1, 1001, n)
        save(root / f"train_data_batch_{i}.npz", data=x, labels=y, mean=x.mean(0))
        xs.append(x)
        ys.append(y)
    xv, yv = rng.integers(0, 256, (n, 3 * size * size), dtype=np.uint8), rng.integers(1, 1001, n)
    save(root / "val_data.npz", data=xv, labels=yv)
    return np.concatenate(xs), np.concatenate(ys), xv, yv


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("size", [32, 64])
def test_downsampled(tmp_path: Path, ctx, size: int, compressed: bool) -> None:
    x_tr, _, xv, yv = write_npz(tmp_path, size, compressed=compressed)
    b = imagenet.load(ImageNetParams(root=str(tmp_path), downsampled=size, preprocess="bartunov"), ctx)
    assert b.info.input_shape == (3, size, size) and b.info.num_classes == 1000
    assert (b.info.train_size, b.info.test_size) == (24, 12)
    x, y = next(iter(b.test))
    assert y.tolist() == (yv - 1).tolist()  # labels are 1-based on disk
    # Pixel (c, i, j) of image n is data[n, c*S*S + i*S + j].
    n, c, i, j = 5, 1, 3, size - 2
    assert float(x[n, c, i, j]) * 255 == pytest.approx(xv[n, c * size * size + i * size + j])
    xs = torch.cat([xb for xb, _ in b.train_eval])
    torch.testing.assert_close(xs, torch.from_numpy(x_tr.reshape(-1, 3, size, size)).float() / 255)


def test_downsampled_archive_layout_and_xiao_flip(tmp_path: Path, ctx) -> None:
    (tmp_path / "Imagenet32_train_npz").mkdir()
    (tmp_path / "Imagenet32_val_npz").mkdir()
    write_npz(tmp_path / "Imagenet32_train_npz", 32)
    (tmp_path / "Imagenet32_train_npz" / "val_data.npz").rename(tmp_path / "Imagenet32_val_npz" / "val_data.npz")
    b = imagenet.load(ImageNetParams(root=str(tmp_path), downsampled=32), ctx)
    assert b.train.augment is not None and b.train_eval.augment is None
    ev = torch.cat([xb for xb, _ in b.train_eval])
    tr_x, _ = zip(*list(b.train), strict=True)
    tr = torch.cat(tr_x)
    # Each training image is an eval image, flipped left-right or not.
    keys = {t.numpy().tobytes() for t in ev}
    assert all(t.numpy().tobytes() in keys or t.flip(-1).numpy().tobytes() in keys for t in tr)


def test_downsampled_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected train_data_batch_1.npz .* found 0 train batches and no val"):
        imagenet.read_downsampled(ImageNetParams(root=str(tmp_path), downsampled=32))
    write_npz(tmp_path, 32)
    with pytest.raises(DataError, match=r"not N x 12288 uint8 .*Is it the 64x64 variant"):
        imagenet.read_downsampled(ImageNetParams(root=str(tmp_path), downsampled=64))
    p = tmp_path / "train_data_batch_2.npz"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cannot read .*train_data_batch_2.npz .*damaged, truncated"):
        imagenet.read_downsampled(ImageNetParams(root=str(tmp_path), downsampled=32))
    np.savez(p, data=np.array([object()], dtype=object), labels=np.array([1]))
    with pytest.raises(DataError, match=r"train_data_batch_2\.npz"):
        imagenet.read_downsampled(ImageNetParams(root=str(tmp_path), downsampled=32))
    np.savez(p, data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 5]))
    with pytest.raises(DataError, match="integer labels 1-1000"):
        imagenet.read_downsampled(ImageNetParams(root=str(tmp_path), downsampled=32))


def test_validation_holdout_from_folders_and_npz(tmp_path: Path, ctx) -> None:
    """``validation: N`` (issue 15): N training images held out, stratified, apart from the training set."""
    write_tree(tmp_path / "tree", per_class=4)
    b = imagenet.load(ImageNetParams(root=str(tmp_path / "tree"), preprocess="bartunov", validation=3), ctx)
    assert b.validation is not None and b.info.train_size == 9 and b.info.test_size == 12
    assert sorted(torch.cat([y for _, y in b.validation]).tolist()) == [0, 1, 2]
    held = torch.cat([x.flatten(1) for x, _ in b.validation])
    train = torch.cat([x.flatten(1) for x, _ in b.train_eval])
    assert not any(torch.equal(h, t) for h in held for t in train)
    (tmp_path / "npz").mkdir()
    x_tr, *_ = write_npz(tmp_path / "npz", 32)
    d = imagenet.load(ImageNetParams(root=str(tmp_path / "npz"), downsampled=32, preprocess="bartunov",
                                     validation=4), ctx)
    assert d.validation is not None and d.info.train_size == 20
    rows = torch.cat([torch.cat([x for x, _ in d.validation]), torch.cat([x for x, _ in d.train_eval])])
    assert sorted(rows.flatten(1).sum(1).tolist()) == pytest.approx(
        sorted((torch.from_numpy(x_tr).float() / 255).sum(1).tolist()))  # a partition of the training set


# Loading at scale: uint8 to the device, one persistent pool, auto workers, one scan per job --------------


@pytest.mark.parametrize("preprocess", ["xiao", "bartunov"])
def test_uint8_handoff_gives_the_numbers_of_float_preprocessing_on_the_cpu(tmp_path: Path, ctx,
                                                                            preprocess: str) -> None:
    """The workers hand over uint8 crops and ``ToFloat`` finishes them on the device: every training batch
    (random crops and flips, seeded) and evaluation batch equals what ToTensor + Normalize per image give."""
    from torchvision.datasets import ImageFolder

    from bioscale.data.loaders import DeviceDataLoader

    write_tree(tmp_path, per_class=3)
    bundle = imagenet.load(ImageNetParams(root=str(tmp_path), preprocess=preprocess), replace(ctx, batch_size=4))
    assert next(iter(bundle.train.loader))[0].dtype == torch.uint8  # what crosses from the workers
    for split, loader, train in (("train", bundle.train, True), ("val", bundle.test, False)):
        old = ImageFolder(str(tmp_path / split), loader=imagenet.read_rgb,
                          transform=imagenet.transforms(preprocess, train))
        reference = DeviceDataLoader(old, loader.batch_size, torch.device("cpu"), shuffle=train, seed=ctx.seed)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            reference.set_epoch(epoch)
            for (x, y), (xr, yr) in zip(loader, reference, strict=True):
                assert x.dtype == torch.float32 and torch.equal(y, yr)
                torch.testing.assert_close(x, xr, atol=1e-6, rtol=0)
    white = imagenet.ToFloat("xiao")(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    expect = [(1 - m) / s for m, s in zip(imagenet.MEAN, imagenet.STD, strict=True)]
    torch.testing.assert_close(white[0, :, 0, 0], torch.tensor(expect))


def test_only_the_training_loader_keeps_its_workers(tmp_path: Path, ctx) -> None:
    write_tree(tmp_path, per_class=2)
    bundle = imagenet.load(ImageNetParams(root=str(tmp_path)), replace(ctx, num_workers=2))
    assert bundle.train.loader.persistent_workers and bundle.train.loader.num_workers == 2
    assert not bundle.train_eval.loader.persistent_workers and not bundle.test.loader.persistent_workers


def test_auto_workers_divide_the_cpus_of_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from bioscale.data import loaders
    from bioscale.spec import TrainSpec
    from bioscale.threads import cpus_available

    assert TrainSpec().num_workers == "auto"
    for key in ("LOCAL_WORLD_SIZE", loaders.JOB_CPUS_ENV):
        monkeypatch.delenv(key, raising=False)
    assert loaders.auto_workers(cpus=32) == 16  # one rank on a 32-CPU Slurm task: capped
    assert loaders.auto_workers(cpus=12) == 11  # one core left for the training process
    assert loaders.auto_workers(cpus=32, ranks_per_node=8) == 3
    assert loaders.auto_workers(cpus=16, job_cpus=4) == 3  # a job packed 4 to a GPU on 16 cores
    assert loaders.auto_workers(cpus=1) == 0  # load in the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: 2 ranks on this node
    monkeypatch.setenv(loaders.JOB_CPUS_ENV, "10")  # the local executor's share for this job
    assert loaders.auto_workers(cpus=64) == 4
    assert loaders.resolve_workers("auto") == min(4, max(0, min(10, cpus_available()) // 2 - 1))
    assert loaders.resolve_workers(3) == 3


class _Group:
    def __init__(self, rank: int) -> None:
        self.rank, self.world, self.is_main = rank, 2, rank == 0


def test_in_a_distributed_job_only_rank_0_scans_the_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 scans and leaves the file list in the job's directory; another rank of the same launch reads it
    (a file added after rank 0's scan stays unseen, as for rank 0); a list from another launch is ignored."""
    from bioscale import distributed

    root, jdir = tmp_path / "data", tmp_path / "job"
    write_tree(root, per_class=2)
    jdir.mkdir()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")
    monkeypatch.setattr(distributed, "job_dir", lambda: jdir)
    monkeypatch.setattr(distributed, "current", lambda: _Group(0))
    tr0, va0 = imagenet.image_folders(ImageNetParams(root=str(root)))
    assert (jdir / imagenet.FILE_LIST).is_file()
    Image.new("RGB", (8, 8)).save(root / "train" / "n01" / "late.png")
    monkeypatch.setattr(distributed, "current", lambda: _Group(1))
    tr1, va1 = imagenet.image_folders(ImageNetParams(root=str(root)))
    assert type(tr1).__name__ == "ImageFolder" and tr1.samples == tr0.samples and va1.samples == va0.samples
    assert tr1.classes == tr0.classes and tr1.targets == tr0.targets and len(tr1) == 6
    assert torch.equal(imagenet.transforms("bartunov", False, uint8=True)(tr1[5][0]),
                       imagenet.transforms("bartunov", False, uint8=True)(tr0[5][0]))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-2")  # a later launch: this rank scans for itself
    assert len(imagenet.image_folders(ImageNetParams(root=str(root)))[0]) == 7
