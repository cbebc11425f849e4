"""``retinanet``: torchvision's RetinaNet (focal loss, FPN, anchor generator, post-processing) for Xiao et
al. 2018's MS COCO experiment, on a ResNet backbone.

Built as ``torchvision.models.detection.retinanet_resnet50_fpn`` builds it (ResNet body, FPN on C3-C5 with
P6/P7 from P5, torchvision's heads and anchors), with the ResNet chosen by ``backbone`` (resnet18 by default,
the net of Xiao et al.'s ImageNet experiments; resnet50 as torchvision's reference). Nothing is downloaded:
``weights=None`` and ``weights_backbone=None`` always. The paper states neither the backbone nor whether it
was ImageNet-pretrained, so both are options: trained from scratch (batch norm trained, all five stages
trainable: torchvision's setting without weights), or ``pretrained_backbone: PATH``, a local state_dict
(e.g. the ``model`` of a bioscale ImageNet job's checkpoint), loaded with torchvision's pretrained setting
(frozen batch norm, the last three stages trainable).

The rules convert every Conv2d of backbone, FPN and heads (there is no Linear: the ResNet's ``fc`` is not
part of a detector); ``output_layers`` names the two head output convs (class logits, box regression) that
``last_layer_bp`` keeps on backprop.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import PositiveInt

from bioscale.catalog import register_arch
from bioscale.errors import BioscaleError
from bioscale.lazy import lazy
from bioscale.spec import Strict

if TYPE_CHECKING:
    from torch import nn

torch = lazy("torch")
detection = lazy("torchvision.models.detection")
backbone_utils = lazy("torchvision.models.detection.backbone_utils")
fpn_ops = lazy("torchvision.ops.feature_pyramid_network")
misc_ops = lazy("torchvision.ops.misc")
retinanet_lib = lazy("torchvision.models.detection.retinanet")

XIAO = "Xiao, Chen, Liao, Poggio 2018; torchvision retinanet_resnet50_fpn"
COCO_MIN, COCO_MAX = 800, 1333
"""torchvision's RetinaNet resizes images to a shorter side of 800 and a longer side of at most 1333."""


class RetinaNetParams(Strict):
    backbone: Literal["resnet18", "resnet50"] = "resnet18"
    pretrained_backbone: str | None = None
    """A local state_dict of the backbone ResNet (a plain one, or a bioscale checkpoint with ``model``);
    None: trained from scratch."""
    min_size: PositiveInt | None = None
    """Shorter side the model resizes images to (torchvision's transform); None: the dataset's input size
    (800 for COCO)."""
    max_size: PositiveInt | None = None
    """Longer side at most; None: ``min_size * 1333 / 800`` as torchvision's 800/1333."""


def _load_backbone(path_text: str) -> dict[str, Any]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise BioscaleError(f"retinanet: pretrained_backbone {path} does not exist; give the path of a ResNet "
                            "state_dict (e.g. a bioscale ImageNet job's checkpoint.pt) or remove the key to "
                            "train the backbone from scratch.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BioscaleError(f"retinanet: cannot read pretrained_backbone {path} as a torch state_dict "
                            f"({type(e).__name__}: {e}); give a file written by torch.save.") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise BioscaleError(f"retinanet: pretrained_backbone {path} holds a {type(state).__name__}, not a state_dict.")
    return state


def _apply_backbone(body: nn.Module, state: dict[str, Any], path: str) -> None:
    """Load the ResNet's weights into the FPN's body (same names, without ``fc``); a missing or misshapen
    tensor is an error, extra entries (``fc``, feedback matrices, BN step counters) are ignored."""
    own = body.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        what = (f"lacks {', '.join(missing[:4])}" if missing else
                f"has {wrong[0]} of shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}")
        raise BioscaleError(f"retinanet: pretrained_backbone {path} is not a state_dict of this backbone: it "
                            f"{what}. Use a ResNet of the same depth trained on 3-channel images of at least "
                            "64 pixels (the small-input stem differs).")
    body.load_state_dict({k: state[k] for k in own}, strict=True)


@lru_cache(maxsize=1)
def _retinanet_class() -> type:
    class BioscaleRetinaNet(retinanet_lib.RetinaNet):
        """torchvision's RetinaNet, naming its output layers for ``last_layer_bp`` and ``last_layer_lr``."""

        def output_layers(self) -> nn.Module:
            return torch.nn.ModuleList([self.head.classification_head.cls_logits,
                                        self.head.regression_head.bbox_reg])

        def summary_forward(self, x: Any) -> Any:
            """Backbone, FPN and heads on an already resized batch (``bioscale arch summary``): what a training
            step keeps for backward, without the box matching and the loss, which need targets."""
            return self.head(list(self.backbone(x).values()))

    return BioscaleRetinaNet


@register_arch("retinanet", params=RetinaNetParams, display="RetinaNet", order=60, layered=False,
               task="detection", source=XIAO,
               summary="torchvision's RetinaNet (FPN, focal loss) on a ResNet-18 or -50 backbone, from scratch "
                       "or a local backbone state_dict.")
def build_retinanet(params: RetinaNetParams, info: Any) -> nn.Module:
    pretrained = params.pretrained_backbone is not None
    norm = misc_ops.FrozenBatchNorm2d if pretrained else torch.nn.BatchNorm2d
    backbone = backbone_utils.resnet_fpn_backbone(
        backbone_name=params.backbone, weights=None, norm_layer=norm, trainable_layers=5,
        returned_layers=[2, 3, 4], extra_blocks=fpn_ops.LastLevelP6P7(256, 256))
    if pretrained:
        _apply_backbone(backbone.body, _load_backbone(params.pretrained_backbone), params.pretrained_backbone)
        for name, p in backbone.body.named_parameters():  # torchvision's 3 trainable stages with weights
            if not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
    shape = getattr(info, "input_shape", (3, COCO_MIN, COCO_MIN))
    min_size = params.min_size or min(shape[1:])
    max_size = params.max_size or max(min_size, round(min_size * COCO_MAX / COCO_MIN))
    return _retinanet_class()(backbone, num_classes=info.num_classes, min_size=min_size, max_size=max_size)
