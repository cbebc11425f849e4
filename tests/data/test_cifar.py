"""cifar10: python-2 batches on disk, layout discovery, tampered and truncated files, augmentation wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bioscale.data import cifar, download
from bioscale.data.cifar import Cifar10Params
from bioscale.errors import DataError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "DEFAULT_CACHE", tmp_path / "cache")
    cifar._cache.clear()


@pytest.mark.parametrize("nested", [True, False])
def test_reads_batches(tmp_path: Path, ctx, nested: bool, cifar_writer) -> None:
    x_tr, y_tr, x_te, y_te = cifar_writer(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    b = cifar.load(Cifar10Params(root=str(tmp_path)), ctx)
    assert b.info.family == "cifar10" and b.info.input_shape == (3, 32, 32)
    assert (b.info.train_size, b.info.test_size) == (100, 20)
    torch.testing.assert_close(b.train_eval.x, torch.from_numpy(x_tr).float() / 255, rtol=0, atol=0)
    assert b.test.y.tolist() == y_te.tolist() and b.train_eval.y.tolist() == y_tr.tolist()
    # The red plane is the first 1024 bytes of a row: check one pixel against the raw layout.
    assert float(b.test.x[3, 0, 2, 5]) * 255 == pytest.approx(x_te.reshape(-1, 3072)[3, 2 * 32 + 5])
    assert float(b.test.x[3, 2, 0, 1]) * 255 == pytest.approx(x_te.reshape(-1, 3072)[3, 2048 + 1])


def test_train_is_augmented_eval_is_not(tmp_path: Path, ctx, cifar_writer) -> None:
    cifar_writer(tmp_path)
    b = cifar.load(Cifar10Params(root=str(tmp_path)), ctx)
    assert b.train.augment is not None and b.train_eval.augment is None and b.test.augment is None
    b = cifar.load(Cifar10Params(root=str(tmp_path), flip="none", crop_padding=0), ctx)
    assert b.train.augment is None


def test_missing_paragraph(tmp_path: Path, cifar_writer) -> None:
    with pytest.raises(DataError) as e:
        cifar.locate(Cifar10Params(root=str(tmp_path)))
    msg = str(e.value)
    assert "data_batch_1" in msg and "test_batch" in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "dataset.params.root=" in msg and "dataset.params.download=true" in msg


def test_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctx, cifar_writer) -> None:
    calls = []

    def fake(root: Path) -> Path:
        calls.append(root)
        cifar_writer(root / "cifar-10-batches-py")
        return root / "cifar-10-batches-py"

    monkeypatch.setattr(download, "download_cifar10", fake)
    with pytest.raises(DataError):
        cifar.load(Cifar10Params(), ctx)
    assert cifar.load(Cifar10Params(download=True), ctx).info.train_size == 100
    assert calls == [tmp_path / "cache" / "cifar10"]


def test_tampered_batch_is_refused_without_side_effect(tmp_path: Path, cifar_writer) -> None:
    import os
    import pickle

    cifar_writer(tmp_path)
    marker = tmp_path / "owned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"refused to load .*data_batch_3: it asks for posix.system") as e:
        cifar.read_all(tmp_path)
    assert "tampered" in str(e.value)
    assert not marker.exists()


def test_truncated_batch(tmp_path: Path, cifar_writer) -> None:
    cifar_writer(tmp_path)
    p = tmp_path / "test_batch"
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"test_batch is damaged or truncated"):
        cifar.read_all(tmp_path)


@pytest.mark.parametrize(
    ("data", "labels", "message"),
    [
        (np.zeros((4, 3000), np.uint8), [0, 1, 2, 3], "not an N x 3072 uint8 array"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 2], "not a list of 4 ints 0-9"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 2, 10], "not a list of 4 ints 0-9"),
    ],
)
def test_wrong_content(
    tmp_path: Path, data: np.ndarray, labels: list[int], message: str, cifar_writer, cifar_pickle
) -> None:
    cifar_writer(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(cifar_pickle(data, labels))
    with pytest.raises(DataError, match=message):
        cifar.read_all(tmp_path)


def test_subset_is_fixed(tmp_path: Path, ctx, cifar_writer) -> None:
    from dataclasses import replace

    cifar_writer(tmp_path)
    a = cifar.load(Cifar10Params(root=str(tmp_path), subset=30), ctx)
    b = cifar.load(Cifar10Params(root=str(tmp_path), subset=30), replace(ctx, seed=11))
    assert a.info.train_size == 30 and torch.equal(a.train.x, b.train.x)
