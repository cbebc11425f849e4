"""Shared helpers for the data tests: a CPU load context, and CIFAR-10 python batches written byte-for-byte
as Python 2's cPickle did (protocol 2, str keys as SHORT_BINSTRING, ``numpy.core.multiarray._reconstruct``),
so the tests read the real on-disk format. (Fixtures, because pytest runs with --import-mode=importlib.)"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bioscale.data import LoaderSettings


@pytest.fixture
def ctx() -> LoaderSettings:
    return LoaderSettings(batch_size=64, eval_batch_size=500, device=torch.device("cpu"), seed=3)


def _s(b: bytes) -> bytes:
    """A python-2 str: SHORT_BINSTRING or BINSTRING."""
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _int(i: int) -> bytes:
    return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _array_u1(a: np.ndarray) -> bytes:
    shape = b"(" + b"".join(_int(d) for d in a.shape) + b"t"
    dtype = b"cnumpy\ndtype\n" + _s(b"u1") + _int(0) + _int(1) + b"\x87R" + (
        b"(" + _int(3) + _s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" + b"J\xff\xff\xff\xff" + _int(0) + b"tb"
    )
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _s(b"b") + b"\x87R"
            + b"(" + _int(1) + shape + dtype + b"\x89" + _s(a.tobytes()) + b"tb")


def py2_batch(data: np.ndarray, labels: list[int], name: bytes = b"training batch 1 of 5") -> bytes:
    items = [(b"data", _array_u1(data)), (b"labels", b"(l" + b"".join(_int(v) + b"a" for v in labels)),
             (b"batch_label", _s(name)), (b"filenames", b"(l" + b"".join(_s(b"f%d.png" % i) + b"a"
                                                                          for i in range(len(labels))))]
    body = b"".join(_s(k) + v for k, v in items)
    return b"\x80\x02}(" + body + b"u."


def write_cifar(d: Path, n_per_batch: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """data_batch_1..5 and test_batch of ``n_per_batch`` images each; returns (x_tr, y_tr, x_te, y_te)."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        (d / name).write_bytes(py2_batch(x, y))
        xs.append(x)
        ys.append(np.array(y))
    return (np.concatenate(xs[:5]).reshape(-1, 3, 32, 32), np.concatenate(ys[:5]),
            xs[5].reshape(-1, 3, 32, 32), ys[5])


@pytest.fixture
def cifar_pickle():
    """``cifar_pickle(data, labels)``: the bytes of one python-2 CIFAR batch file."""
    return py2_batch


@pytest.fixture
def cifar_writer():
    """``cifar_writer(dir)``: write data_batch_1..5 and test_batch; returns (x_tr, y_tr, x_te, y_te)."""
    return write_cifar
