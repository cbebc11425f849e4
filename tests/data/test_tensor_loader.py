"""The device-resident loader: each example exactly once per epoch, order fixed by (seed, epoch)."""

from __future__ import annotations

import torch

from bioscale.data.loaders import TensorLoader


def _data(n: int = 103) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2).clone()
    return x, torch.arange(n) % 10


def _order(loader: TensorLoader) -> list[int]:
    out = []
    for xb, yb in loader:
        ids = xb[:, 0, 0, 0].long()
        assert torch.equal(yb, ids % 10)  # labels travel with their images
        out += ids.tolist()
    return out


def test_every_example_once_per_epoch_and_batch_sizes() -> None:
    loader = TensorLoader(*_data(), batch_size=10, shuffle=True, seed=1)
    assert len(loader) == 11
    sizes = [len(xb) for xb, _ in loader]
    assert sizes == [10] * 10 + [3]
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert sorted(_order(loader)) == list(range(103))


def test_orders_differ_across_epochs_and_repeat_for_same_seed_epoch() -> None:
    a = TensorLoader(*_data(), batch_size=16, shuffle=True, seed=1)
    b = TensorLoader(*_data(), batch_size=16, shuffle=True, seed=1)
    c = TensorLoader(*_data(), batch_size=16, shuffle=True, seed=2)
    orders = []
    for epoch in range(3):
        for loader in (a, b, c):
            loader.set_epoch(epoch)
        oa, ob, oc = _order(a), _order(b), _order(c)
        assert oa == ob and oa != oc
        assert oa != list(range(103))
        orders.append(oa)
    assert orders[0] != orders[1] != orders[2]
    a.set_epoch(0)
    assert _order(a) == orders[0]  # a resumed job sees epoch 0 again exactly


def test_unshuffled_is_in_order() -> None:
    assert _order(TensorLoader(*_data(), batch_size=7)) == list(range(103))


def test_drop_last() -> None:
    loader = TensorLoader(*_data(), batch_size=10, shuffle=True, drop_last=True)
    assert len(loader) == 10 and len(_order(loader)) == 100


def test_augment_gets_the_epoch_generator() -> None:
    seen = []

    def aug(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append(torch.rand(1, generator=gen).item())
        return x + 1000

    loader = TensorLoader(*_data(20), batch_size=10, augment=aug, seed=4)
    xb, _ = next(iter(loader))
    assert float(xb.min()) >= 1000
    first = list(seen)
    seen.clear()
    list(loader)
    assert seen[0] == first[0]
    loader.set_epoch(1)
    seen.clear()
    list(loader)
    assert seen[0] != first[0]


def _ids(batches) -> list[int]:
    out = []
    for xb, yb in batches:
        ids = xb.reshape(len(xb), -1)[:, 0].round().long()
        assert torch.equal(yb, ids % 10)
        out += ids.tolist()
    return out


def test_host_loader_matches_contract_and_scales() -> None:
    from bioscale.data.loaders import HostTensorLoader

    n = 103
    x = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).clone()
    y = torch.arange(n) % 10
    loader = HostTensorLoader(x, y, 10, torch.device("cpu"), shuffle=True, seed=1, scale=1.0)
    xb, _ = next(iter(loader))
    assert xb.dtype == torch.float32
    orders = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        order = _ids(loader)
        assert sorted(order) == list(range(n))
        orders.append(order)
    assert orders[0] == orders[2] != orders[1]
    # Same (seed, epoch) as TensorLoader gives the same order: the two are interchangeable on resume.
    tl = TensorLoader(x.float(), y, 10, shuffle=True, seed=1)
    assert _ids(tl) == orders[0]


def test_device_data_loader_once_per_epoch_and_reproducible() -> None:
    from torch.utils.data import TensorDataset

    from bioscale.data.loaders import DeviceDataLoader

    x, y = _data(57)
    loader = DeviceDataLoader(TensorDataset(x, y), 8, torch.device("cpu"), shuffle=True, seed=2)
    assert len(loader) == 8
    first = _ids(loader)
    assert sorted(first) == list(range(57)) and first != list(range(57))
    assert _ids(loader) == first
    loader.set_epoch(1)
    assert _ids(loader) != first
    ordered = DeviceDataLoader(TensorDataset(x, y), 8, torch.device("cpu"))
    assert _ids(ordered) == list(range(57))


def test_seeded_dataset_leaves_the_global_generator_alone() -> None:
    from torch.utils.data import TensorDataset

    from bioscale.data.loaders import DeviceDataLoader

    x, y = _data(20)
    loader = DeviceDataLoader(TensorDataset(x, y), 8, torch.device("cpu"), shuffle=True, seed=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(loader)  # num_workers=0: items are read in this process
    assert torch.equal(torch.rand(3), expected)


def test_first_batch_starts_no_worker_pool() -> None:
    """Diagnostics read one batch each epoch: through the worker pool that would start it and prefetch
    2W+1 batches to use one (with ImageNet at batch 1000, gigabytes of shared memory)."""
    import torch

    from bioscale.data.loaders import DeviceDataLoader, first_batch

    data = torch.utils.data.TensorDataset(torch.arange(20.0)[:, None], torch.arange(20))
    loader = DeviceDataLoader(data, 8, torch.device("cpu"), num_workers=2)
    x, y = first_batch(loader)
    assert loader.loader._iterator is None  # no pool was started
    xi, yi = next(iter(DeviceDataLoader(data, 8, torch.device("cpu"))))
    assert torch.equal(x, xi) and torch.equal(y, yi)
