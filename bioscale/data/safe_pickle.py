"""Load data pickles (CIFAR's python batches) without letting the file run code.

``pickle.load`` calls whatever callables the file names, so a tampered download could run ``os.system``.
This unpickler resolves only the few globals that numpy arrays need (``_reconstruct``, ``ndarray``,
``dtype``, ``_frombuffer``, and ``_codecs.encode`` that Python 3 uses for bytes in protocol 2); builtin
containers, strings, bytes and numbers need no globals at all. Anything else is refused before it is
called, and object arrays (which could smuggle arbitrary objects) are refused too.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any

import numpy as np

from bioscale.errors import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]


class UnsafePickleError(DataError):
    """A pickle that asks for something a data file never needs."""


def _dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError("it contains an object array, which a data file never needs")
    return dt


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8"):
        raise UnsafePickleError(f"it asks for the codec {encoding!r}")
    return codecs.encode(text, encoding)


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
}


class DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"it asks for {module}.{name}, which a data file never needs") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("it uses persistent ids, which a data file never needs")


def loads(data: bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` allowing only plain containers and numpy arrays of plain dtypes.

    Raises ``UnsafePickleError`` (a ``DataError``) for anything else, or ``pickle.UnpicklingError`` and
    friends for a damaged file; callers wrap both into a message that names the file.
    """
    obj = DataUnpickler(io.BytesIO(data), encoding=encoding).load()
    _check(obj)
    return obj


def _check(obj: Any, depth: int = 0) -> None:
    """Belt and braces: the result holds only data types."""
    if depth > 20:
        raise UnsafePickleError("it nests containers more than 20 deep")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError("it contains an object array, which a data file never needs")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check(k, depth + 1)
            _check(v, depth + 1)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _check(v, depth + 1)
    elif not isinstance(obj, str | bytes | int | float | bool | type(None) | np.dtype):
        raise UnsafePickleError(f"it contains a {type(obj).__name__}, which a data file never needs")
