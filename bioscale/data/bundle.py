"""Turn in-memory arrays of a small dataset into a device-resident ``DataBundle``.

Every small dataset (MNIST-like, digits, CIFAR-10) ends here, so the subset, the [0, 1] scaling and the
device copy happen the same way for all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from bioscale.data.base import DataBundle, DataShape
from bioscale.data.loaders import Augment, TensorLoader
from bioscale.data.split import training_indices

if TYPE_CHECKING:
    from bioscale.data import LoaderSettings


def to_device_images(x: np.ndarray | torch.Tensor, device: torch.device, scale: float) -> torch.Tensor:
    """uint8/float images -> float32 on ``device`` divided by ``scale``.

    The copy is made before the conversion so only the compact uint8 array crosses to the device.
    """
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).to(device)
    if t.dtype == torch.float32:
        return t / scale  # not in place: ``t`` may share memory with a cached array
    return t.to(torch.float32).div_(scale)  # a fresh tensor: dividing in place saves a pass


def to_device_labels(y: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.long).to(device)


def tensor_bundle(
    name: str,
    family: str,
    num_classes: int,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    ctx: LoaderSettings,
    *,
    subset: int | None = None,
    validation: int | None = None,
    scale: float = 255.0,
    augment: Augment | None = None,
) -> DataBundle:
    """Build the bundle. ``train``/``test`` are ``(x (N, C, H, W), y (N,))`` arrays on the host.

    ``subset`` picks a fixed stratified subset of the training set and ``validation`` holds a fixed stratified
    part of it out (``bioscale.data.split.training_indices``); the test set is never subsetted, so test errors
    stay comparable with the paper's.
    """
    x_tr, y_tr = train
    idx, held = training_indices(np.asarray(y_tr), subset, validation, name)
    dev = ctx.device
    val = None
    if held is not None:
        xv, yv = to_device_images(x_tr[held], dev, scale), to_device_labels(y_tr[held], dev)
        val = TensorLoader(xv, yv, ctx.eval_batch_size)
    if idx is not None:
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    xt, yt = to_device_images(x_tr, dev, scale), to_device_labels(y_tr, dev)
    xe, ye = to_device_images(test[0], dev, scale), to_device_labels(test[1], dev)
    info = DataShape(family, tuple(xt.shape[1:]), num_classes, len(xt), len(xe))  # type: ignore[arg-type]
    return DataBundle(
        info=info,
        train=TensorLoader(xt, yt, ctx.batch_size, shuffle=True, seed=ctx.seed, augment=augment),
        train_eval=TensorLoader(xt, yt, ctx.eval_batch_size),
        test=TensorLoader(xe, ye, ctx.eval_batch_size),
        validation=val,
    )
