"""Architectures: names, parameters and which rules they can run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, PositiveInt, field_validator

from bioscale.catalog import ARCHS, ArchInfo


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FCParams(_Params):
    hidden: list[PositiveInt] | None = None
    """Hidden layer widths; None is Bartunov et al.'s Table 3 preset for the dataset."""


class LCParams(_Params):
    layers: list[tuple[PositiveInt, PositiveInt, PositiveInt]] | None = None
    """(kernel size, output channels, stride) per locally-connected layer; None is Table 3's preset."""
    hidden: list[PositiveInt] | None = None
    """Fully-connected layers after the LC stack (may be empty); None is Table 3's preset."""

    @field_validator("layers")
    @classmethod
    def _odd_kernels(cls, layers: list[tuple[int, int, int]] | None) -> list[tuple[int, int, int]] | None:
        for i, (k, _, _) in enumerate(layers or []):
            if k % 2 == 0:
                raise ValueError(
                    f"layer {i} has kernel size {k}; these nets zero-pad by k // 2 so that stride 1 keeps "
                    "the shape, which needs an odd kernel size (e.g. 3, 5, 9)"
                )
        return layers


class TorchvisionParams(_Params):
    pass


for _info in [
    ArchInfo("fc", FCParams, "bioscale.models.presets:build_fc",
             "Bartunov et al.'s fully-connected nets (Table 3): tanh, Glorot init, softmax.", layered=True),
    ArchInfo("lc", LCParams, "bioscale.models.presets:build_lc",
             "Bartunov et al.'s locally-connected nets (Table 3).", layered=True),
    ArchInfo("conv", LCParams, "bioscale.models.presets:build_conv",
             "Table 3's LC net with shared weights (the paper's 'BP ConvNet').", layered=True),
    ArchInfo("resnet18", TorchvisionParams, "bioscale.models.torchvision_nets:build_resnet18",
             "torchvision's ResNet-18 (Xiao et al.).", layered=False),
    ArchInfo("alexnet", TorchvisionParams, "bioscale.models.torchvision_nets:build_alexnet",
             "AlexNet, Xiao et al.'s variant: batch norm before every ReLU, no bias before BN, no dropout.",
             layered=False),
]:
    ARCHS.register(_info.name, _info)
