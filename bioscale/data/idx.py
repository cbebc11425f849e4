"""A strict reader for the IDX format of MNIST and Fashion-MNIST, gzipped or raw.

IDX: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, each dimension as a
big-endian uint32, then the values, big-endian, row-major. The reader checks all of it and that the file
holds exactly the promised number of bytes, so a truncated download fails here with the file's name
instead of giving silently short or misaligned tensors later.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from bioscale.errors import DataError

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxError(DataError):
    """An IDX file that is truncated, corrupt or not IDX at all."""


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name says)."""
    raw = Path(path).read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise IdxError(f"{path} is a damaged gzip file ({e}).") from e


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array of the file's shape (native byte order)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxError(f"{path} is not an IDX file (it does not start with two zero bytes).")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise IdxError(f"{path} has an unknown IDX type code 0x{code:02x}.")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise IdxError(f"{path} is truncated inside its IDX header ({len(data)} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - 4 - 4 * ndim
    if body != expected:
        what = "truncated" if body < expected else "longer than its header says"
        raise IdxError(f"{path} is {what}: its header promises shape {shape} ({expected} bytes of data) "
                       f"but it holds {body}.")
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def read_idx(path: Path) -> np.ndarray:
    """Read and validate one IDX file (``.gz`` or raw)."""
    return parse_idx(read_bytes(path), path)


def write_idx(path: Path, arr: np.ndarray, *, compress: bool = False) -> None:
    """Write ``arr`` as IDX (for tests and for converting data); the inverse of ``read_idx``."""
    codes = {v.newbyteorder("="): k for k, v in _TYPES.items()}
    native = arr.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}")
    code = codes[native]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(arr, dtype=_TYPES[code]).tobytes()
    Path(path).write_bytes(gzip.compress(data) if compress else data)
