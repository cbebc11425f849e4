"""The IDX reader against bytes laid out by hand from the format's definition (not by ``write_idx``)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from bioscale.data.idx import IdxError, read_idx, write_idx


def _idx_bytes(arr: np.ndarray, code: int, be_dtype: str) -> bytes:
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(be_dtype).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_reads_uint8_images_raw_and_gz(tmp_path: Path, compress: bool) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    data = _idx_bytes(arr, 0x08, "u1")
    p = tmp_path / ("x.gz" if compress else "x")
    p.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28)
    np.testing.assert_array_equal(out, arr)
    out[0, 0, 0] = 7  # writable: torch.as_tensor must not see a read-only buffer


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(10, dtype=np.uint8)
    p = tmp_path / "labels-idx1-ubyte"  # no .gz suffix, gzipped content
    p.write_bytes(gzip.compress(_idx_bytes(arr, 0x08, "u1")))
    np.testing.assert_array_equal(read_idx(p), arr)


def test_big_endian_types(tmp_path: Path) -> None:
    arr = np.array([[1, -2, 300], [70000, 5, -6]], dtype=np.int32)
    p = tmp_path / "i4"
    p.write_bytes(_idx_bytes(arr, 0x0C, ">i4"))
    np.testing.assert_array_equal(read_idx(p), arr)
    f = np.array([0.5, -1.25], dtype=np.float32)
    p.write_bytes(_idx_bytes(f, 0x0D, ">f4"))
    np.testing.assert_array_equal(read_idx(p), f)


def test_write_idx_round_trips(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    write_idx(tmp_path / "a.gz", arr, compress=True)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == _idx_bytes(arr, 0x08, "u1")


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-1], r"truncated: its header promises shape \(4, 28, 28\) \(3136 bytes.*holds 3135"),
        (lambda b: b + b"\0", "longer than its header says"),
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x0a" + b[3:], "unknown IDX type code 0x0a"),
        (lambda b: b[:9], "truncated inside its IDX header"),
        (lambda b: b"", "not an IDX file"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path: Path, mangle, message: str) -> None:
    good = _idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x08, "u1")
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(mangle(good))
    with pytest.raises(IdxError, match=message) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(_idx_bytes(np.ones((50, 28, 28), np.uint8), 0x08, "u1"))[:-20])
    with pytest.raises(IdxError, match="damaged gzip file") as e:
        read_idx(p)
    assert str(p) in str(e.value)
