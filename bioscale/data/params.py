"""Parameters several datasets share (each dataset's own extras live next to its loader)."""

from __future__ import annotations

from pydantic import PositiveInt

from bioscale.ids import added
from bioscale.spec import Strict


class BundledParams(Strict):
    """Datasets shipped inside an installed Python package: nothing to locate."""

    subset: PositiveInt | None = None
    """Train on a fixed stratified subset of this many training examples (same images for every job)."""
    validation: PositiveInt | None = added(None)
    """Hold this many training examples out as a validation set (fixed, stratified, the same for every job;
    taken before ``subset``): jobs then record ``val_error`` every epoch, which a search selects on instead of
    the test error. None: no validation set, the whole training set is trained on."""


class DataParams(BundledParams):
    root: str | None = None
    """Where the files are; None means the dataset's default location."""


class DownloadParams(DataParams):
    download: bool = False
    """Let torchvision download the files into ``root`` (or ~/.cache/bioscale/<dataset>) if missing."""
