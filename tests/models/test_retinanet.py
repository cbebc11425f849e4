"""retinanet: every Conv2d of backbone, FPN and heads goes through the rule's converter (counted against
torchvision's own model), the feedback matrices are what the backward uses, last_layer_bp keeps the two head
output convs, and a local backbone state_dict loads (or is refused clearly)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from bioscale.data.coco import DetectionInfo
from bioscale.errors import BioscaleError
from bioscale.layers.feedback import is_feedback_layer
from bioscale.models import build_model
from bioscale.rules import build_rule
from bioscale.spec import JobSpec
from bioscale.tasks import get as get_task

INFO = DetectionInfo("coco", 3, ("a", "b", "c"), (1, 2, 3), 4, 4, (3, 64, 64))
HEAD_OUTPUTS = ["head.classification_head.cls_logits", "head.regression_head.bbox_reg"]


def _spec(rule: str, backbone: str = "resnet18", **rule_params) -> JobSpec:
    return JobSpec.model_validate({"dataset": "coco", "rule": {"name": rule, "params": rule_params},
                                   "arch": {"name": "retinanet", "params": {"backbone": backbone}}})


def _convertible(model: nn.Module) -> list[str]:
    """An independent walk: names of the exact nn.Conv2d / nn.Linear modules."""
    return [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 64, 80, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 30.0, 24.0]]),
                "labels": torch.tensor([2, 0])}]
    return images, targets


@pytest.mark.parametrize("rule", ["fa", "ss", "frsf", "brsf", "kp"])
def test_every_conv_of_torchvisions_retinanet_is_converted(rule: str) -> None:
    """Against torchvision's retinanet_resnet50_fpn (built without weights): same module names, all converted."""
    reference = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                                                    num_classes=3)
    expected = _convertible(reference)
    assert len(expected) == 71  # 53 ResNet-50 convs (no fc in a detector) + 8 FPN + 10 head convs
    r = build_rule(_spec(rule, "resnet50"))
    model = r.prepare(build_model(_spec(rule, "resnet50").arch, INFO))
    assert r.report.names == expected and r.report.converted == {"Conv2d": 71} and not r.report.kept_bp
    assert _convertible(model) == []
    assert "converted 71 Conv2d" in r.describe()


def test_last_layer_bp_keeps_both_head_outputs() -> None:
    unconverted = build_model(_spec("bp").arch, INFO)
    expected = _convertible(unconverted)
    r = build_rule(_spec("ss", last_layer_bp=True))
    model = r.prepare(build_model(_spec("ss").arch, INFO))
    assert r.report.kept_bp == HEAD_OUTPUTS
    assert r.report.names == [n for n in expected if n not in HEAD_OUTPUTS]
    assert len(expected) == 20 + 8 + 10  # ResNet-18 convs incl. 3 downsample, FPN, heads
    assert _convertible(model) == HEAD_OUTPUTS
    assert "kept on backprop: head.classification_head.cls_logits, head.regression_head.bbox_reg" in r.describe()


def _grads(model: nn.Module, rule) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    images, targets = _batch()
    loss, _ = get_task("detection").loss(model, images, targets, None)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_feedback_matrices_are_what_the_backward_uses() -> None:
    """FA with random B gives other gradients than backprop below the heads' outputs; setting every B to its W
    gives backprop's gradients exactly. Plain backprop in the converted layers would fail the first part."""
    torch.manual_seed(0)
    base = build_model(_spec("bp").arch, INFO)
    bp_model = copy.deepcopy(base)
    r = build_rule(_spec("fa"))
    fa_model = r.prepare(copy.deepcopy(base))
    bp = _grads(bp_model, None)
    fa = _grads(fa_model, r)
    assert set(bp) == set(fa)
    # the output convs' weight gradients are local (same error, same input): equal; everything below differs
    for name in HEAD_OUTPUTS:
        torch.testing.assert_close(fa[f"{name}.weight"], bp[f"{name}.weight"])
    for name in ("backbone.body.conv1.weight", "backbone.body.layer4.1.conv2.weight",
                 "backbone.fpn.inner_blocks.0.0.weight", "head.classification_head.conv.0.0.weight"):
        assert not torch.allclose(fa[name], bp[name], rtol=1e-3, atol=1e-7), name
    layers = [m for m in fa_model.modules() if is_feedback_layer(m)]
    assert len(layers) == 38
    with torch.no_grad():
        for m in layers:
            m.feedback.matrix.copy_(m.weight)
            assert torch.equal(m.feedback_weight, m.weight)
    same = _grads(fa_model, r)
    for name in bp:
        torch.testing.assert_close(same[name], bp[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sign_symmetry_uses_sign_of_w_in_shared_head_convs() -> None:
    """The head convs run once per pyramid level in one forward; sign-symmetry's B must be sign(W)*scale for
    all five (and the workspace must not be rewritten in between: autograd would refuse the backward)."""
    torch.manual_seed(0)
    base = build_model(_spec("bp").arch, INFO)
    r = build_rule(_spec("ss"))
    model = r.prepare(copy.deepcopy(base))
    ss = _grads(model, r)
    bp = _grads(copy.deepcopy(base), None)
    assert not torch.allclose(ss["backbone.body.conv1.weight"], bp["backbone.body.conv1.weight"], rtol=1e-3)
    conv = model.head.classification_head.conv[0][0]
    torch.testing.assert_close(conv.feedback_weight, torch.sign(conv.weight) * conv.feedback.scale)


def test_pretrained_backbone_loads_from_a_local_state_dict(tmp_path: Path) -> None:
    resnet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        resnet.layer3[0].conv1.weight.fill_(0.125)
    path = tmp_path / "r18.pt"
    torch.save({"model": resnet.state_dict()}, path)  # as a bioscale checkpoint holds it
    spec = JobSpec.model_validate({"dataset": "coco", "rule": "bp", "arch": {
        "name": "retinanet", "params": {"pretrained_backbone": str(path)}}})
    model = build_model(spec.arch, INFO)
    assert bool((model.backbone.body.layer3[0].conv1.weight == 0.125).all())
    assert isinstance(model.backbone.body.bn1, torchvision.ops.misc.FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad  # torchvision's 3 trainable stages
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad


@pytest.mark.parametrize("content", ["missing", "garbage", "wrong"])
def test_bad_pretrained_backbone_is_one_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "b.pt"
    if content == "garbage":
        path.write_bytes(b"not a torch file")
    elif content == "wrong":
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    spec = JobSpec.model_validate({"dataset": "coco", "rule": "bp", "arch": {
        "name": "retinanet", "params": {"pretrained_backbone": str(path)}}})
    with pytest.raises(BioscaleError, match="pretrained_backbone"):
        build_model(spec.arch, INFO)


def test_model_resizes_to_the_datasets_side() -> None:
    model = build_model(_spec("bp").arch, INFO)
    assert model.transform.min_size == (64,) and model.transform.max_size == 107
    coco = build_model(_spec("bp").arch, DetectionInfo("coco", 80, (), (), 1, 1))
    assert coco.transform.min_size == (800,) and coco.transform.max_size == 1333


def test_arch_summary_measures_backbone_fpn_and_heads() -> None:
    from bioscale.data.base import DataShape
    from bioscale.models.summary import summarize
    from bioscale.spec import ArchSpec

    s = summarize(ArchSpec(name="retinanet"), DataShape("mnist-boxes", (3, 128, 128), 10, 1, 1), 2)
    convs = [r for r in s.layers if r.kind == "Conv2d"]
    assert len(convs) == 20 + 8 + 10  # a head conv runs once per pyramid level: one row (its last shape)
    assert s.activation_bytes > 0 and s.trainable_params == s.total_params
