"""The restricted unpickler: numpy arrays and containers load; anything that could run code is refused
before it runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bioscale.data import safe_pickle
from bioscale.data.safe_pickle import UnsafePickleError


class _System:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _WriteFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (eval, (f"open({str(self.target)!r}, 'w').write('pwned')",))


def test_py2_cifar_batch_loads(cifar_pickle) -> None:
    x = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    d = safe_pickle.loads(cifar_pickle(x, [1, 2, 3]))
    np.testing.assert_array_equal(d[b"data"], x)
    assert d[b"labels"] == [1, 2, 3] and d[b"filenames"][0] == b"f0.png"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_of_arrays_load(protocol: int) -> None:
    obj = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "f": np.ones(2, ">f4"), "labels": [1, 2],
           "name": b"raw", "t": (1.5, None, True)}
    out = safe_pickle.loads(pickle.dumps(obj, protocol=protocol))
    np.testing.assert_array_equal(out["data"], obj["data"])
    np.testing.assert_array_equal(out["f"], obj["f"])
    assert out["labels"] == [1, 2] and out["name"] == b"raw" and out["t"] == (1.5, None, True)


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("payload", [_System, _WriteFile])
def test_code_execution_is_refused_and_has_no_effect(tmp_path: Path, protocol: int, payload: type) -> None:
    target = tmp_path / "side_effect"
    evil = pickle.dumps({b"data": np.zeros(3, np.uint8), b"labels": [payload(target)]}, protocol=protocol)
    # Sanity: the plain unpickler really would run it (on a throwaway target).
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(payload(canary), protocol=protocol))
    assert canary.exists()
    with pytest.raises(UnsafePickleError, match=r"asks for (posix|os|nt|builtins|__builtin__)\.(system|eval)"):
        safe_pickle.loads(evil)
    assert not target.exists()


def test_object_arrays_are_refused() -> None:
    with pytest.raises(UnsafePickleError, match="object array"):
        safe_pickle.loads(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))


def test_other_classes_are_refused() -> None:
    import collections

    with pytest.raises(UnsafePickleError, match=r"collections\.OrderedDict"):
        safe_pickle.loads(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(UnsafePickleError, match="asks for"):
        safe_pickle.loads(pickle.dumps({1, 2}, protocol=0))  # protocol 0 sets go through builtins.set


def test_refusal_is_a_data_error() -> None:
    from bioscale.errors import DataError

    assert issubclass(UnsafePickleError, DataError)
