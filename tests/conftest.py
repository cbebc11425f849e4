"""Shared fixtures: tiny grids on synthetic data, so foundation tests take seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models on 2 shared cores run many times faster single-threaded."""
    import torch

    torch.set_num_threads(1)


def write_grid(tmp_path: Path, data: dict, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def grid_writer():
    """``grid_writer(tmp_path, data)`` writes a grid YAML file and returns its path."""
    return write_grid


@pytest.fixture
def tiny_grid() -> dict:
    """bp and fa on a small FC net over synthetic data, 2 epochs."""
    return {
        "name": "tiny",
        "base": {
            "dataset": {"name": "synthetic", "params": {"train_size": 256, "test_size": 128,
                                                       "shape": [1, 8, 8]}},
            "arch": {"name": "fc", "params": {"hidden": [32, 32]}},
            "rule": "bp",
            "optim": {"name": "adam", "lr": 1e-3},
            "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 128},
        },
        "axes": {"rule.name": ["bp", "fa"], "seed": [0, 1]},
    }


@pytest.fixture
def float64():
    """Exact comparisons in float64; the global default dtype is restored after the test."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
