"""mnist / fashion-mnist: finding the IDX files, cross-checking them, and the error paragraphs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bioscale.data import download, mnist
from bioscale.data.params import DownloadParams
from bioscale.errors import DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_set(d: Path, n_train: int = 30, n_test: int = 20, *, gz: bool = True) -> dict[str, np.ndarray]:
    """A tiny MNIST in the real on-disk layout; returns the arrays written."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, a in arrays.items():
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(_idx(a)))
        else:
            (d / stem).write_bytes(_idx(a))
    return arrays


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "DEFAULT_CACHE", tmp_path / "cache")
    mnist._cache.clear()


@pytest.mark.parametrize("layout", ["flat", "raw", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
def test_reads_every_layout(tmp_path: Path, ctx, layout: str, gz: bool) -> None:
    root = tmp_path / "data"
    d = {"flat": root, "raw": root / "raw", "torchvision": root / "MNIST" / "raw"}[layout]
    arrays = write_set(d, gz=gz)
    b = mnist.load_mnist(DownloadParams(root=str(root)), ctx)
    assert b.info.input_shape == (1, 28, 28) and (b.info.train_size, b.info.test_size) == (30, 20)
    expect = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None] / 255
    torch.testing.assert_close(b.test.x, expect, rtol=0, atol=0)
    assert b.train.y.tolist() == (np.arange(30) % 10).tolist()


def test_subset_is_stratified(tmp_path: Path, ctx) -> None:
    write_set(tmp_path, n_train=100)
    b = mnist.load_mnist(DownloadParams(root=str(tmp_path), subset=20), ctx)
    assert torch.bincount(b.train.y).tolist() == [2] * 10


def test_missing_files_paragraph(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        mnist.locate("mnist", DownloadParams(root=str(tmp_path)))
    msg = str(e.value)
    assert "train-images-idx3-ubyte[.gz]" in msg and str(tmp_path) in msg
    assert "dataset.params.root=" in msg and "dataset.params.download=true" in msg


def test_fashion_missing_names_the_apt_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(mnist.SYSTEM_DIRS, "fashion-mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist"):
        mnist.locate("fashion-mnist", DownloadParams())


def test_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctx) -> None:
    calls = []

    def fake_download(name: str, root: Path) -> Path:
        calls.append((name, root))
        write_set(root / "MNIST" / "raw")
        return root / "MNIST" / "raw"

    monkeypatch.setattr(download, "download_idx", fake_download)
    with pytest.raises(DataError):
        mnist.load_mnist(DownloadParams(), ctx)
    assert calls == []
    b = mnist.load_mnist(DownloadParams(download=True), ctx)
    assert calls == [("mnist", tmp_path / "cache" / "mnist")] and b.info.train_size == 30
    mnist.load_mnist(DownloadParams(download=True), ctx)  # already there: no second download
    assert len(calls) == 1


def test_truncated_file_names_file_and_fix(tmp_path: Path) -> None:
    write_set(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100]))
    with pytest.raises(DataError, match=r"mnist: .*train-images-idx3-ubyte.gz is truncated.*Delete the damaged"):
        mnist.read_set("mnist", mnist.locate("mnist", DownloadParams(root=str(tmp_path))))


def test_mismatched_labels(tmp_path: Path) -> None:
    write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(19, np.uint8))))
    with pytest.raises(DataError, match="does not hold 20 uint8 labels 0-9"):
        mnist.read_set("mnist", mnist.locate("mnist", DownloadParams(root=str(tmp_path))))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.full(20, 10, np.uint8))))
    with pytest.raises(DataError, match="labels 0-9"):
        mnist.read_set("mnist", mnist.locate("mnist", DownloadParams(root=str(tmp_path))))


def test_wrong_image_shape(tmp_path: Path) -> None:
    write_set(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((30, 32, 32), np.uint8))))
    with pytest.raises(DataError, match=r"not N x 28 x 28 uint8"):
        mnist.read_set("mnist", mnist.locate("mnist", DownloadParams(root=str(tmp_path))))


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs `apt-get install dataset-fashion-mnist`")
def test_real_fashion_mnist_is_found_and_sane(ctx) -> None:
    b = mnist.load_fashion_mnist(DownloadParams(), ctx)
    assert (b.info.train_size, b.info.test_size) == (60000, 10000)
    assert torch.bincount(b.test.y).tolist() == [1000] * 10
    assert torch.bincount(b.train.y).tolist() == [6000] * 10
    assert 0.25 < float(b.train.x.mean()) < 0.32  # Fashion-MNIST's known mean pixel is about 0.286
