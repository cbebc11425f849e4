"""Fetch datasets with torchvision's downloaders, only when the user asked for it (``download: true``).

Only the download helpers are used: torchvision's dataset classes would then unpickle CIFAR with plain
``pickle`` (bioscale reads every file with its own validating readers instead). Nothing here runs in tests.
"""

from __future__ import annotations

from pathlib import Path

from bioscale.errors import DataError

DEFAULT_CACHE = Path.home() / ".cache" / "bioscale"


def default_root(name: str) -> Path:
    """Where a download goes when the user gives no ``root``."""
    return DEFAULT_CACHE / name


def download_idx(name: str, root: Path) -> Path:
    """Download MNIST or Fashion-MNIST into torchvision's layout ``root/<Class>/raw``; returns that folder."""
    from torchvision.datasets import MNIST, FashionMNIST
    from torchvision.datasets.utils import download_url

    cls = {"mnist": MNIST, "fashion-mnist": FashionMNIST}[name]
    raw = root / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for filename, md5 in cls.resources:
        if (raw / filename).is_file():
            continue
        errors = []
        for mirror in cls.mirrors:
            try:
                download_url(f"{mirror}{filename}", str(raw), filename=filename, md5=md5)
                break
            except Exception as e:
                errors.append(f"{mirror}: {e}")
        else:
            raise DataError(f"could not download {filename} for {name} into {raw} ({'; '.join(errors)}). "
                            "Check the machine's internet access, or copy the files there by hand.")
    return raw


def download_cifar10(root: Path) -> Path:
    """Download and unpack ``cifar-10-python.tar.gz`` into ``root``; returns ``root/cifar-10-batches-py``."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    target = root / CIFAR10.base_folder
    if not target.is_dir():
        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as e:
            raise DataError(f"could not download CIFAR-10 into {root} ({e}). Check the machine's internet "
                            "access, or unpack cifar-10-python.tar.gz there by hand.") from e
    return target
