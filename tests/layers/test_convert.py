"""The converter: what it swaps, what it keeps, and that the converted model still compiles and saves."""

from __future__ import annotations

import io

import pytest
import torch
import torchvision
from torch import nn

from bioscale.data.base import DataShape
from bioscale.errors import BioscaleError
from bioscale.layers.convert import convert_to_feedback
from bioscale.layers.feedback import (
    FeedbackConv2d,
    FeedbackLinear,
    FeedbackLocallyConnected2d,
    MatrixFeedback,
    SignFeedback,
)
from bioscale.layers.locally_connected import LocallyConnected2d
from bioscale.models.base import output_module
from bioscale.models.presets import FCParams, build_fc


def fa(weight: torch.Tensor) -> nn.Module:
    return MatrixFeedback.random(weight, "xavier")


def small_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        LocallyConnected2d(4, 3, (8, 8), 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 10),
    )


def test_resnet18_counts_and_keeps_last_layer() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    report = convert_to_feedback(model, fa, keep_bp=[output_module(model)])
    assert report.converted == {"Conv2d": 20}  # 17 3x3/7x7 convs + 3 1x1 downsample convs
    assert report.kept_bp == ["fc"]
    assert type(model.fc) is nn.Linear
    assert isinstance(model.layer2[0].downsample[0], FeedbackConv2d)
    assert "converted 20 Conv2d; kept on backprop: fc" in str(report)


def test_alexnet_counts() -> None:
    model = torchvision.models.alexnet(num_classes=10)
    report = convert_to_feedback(model, fa)
    assert report.converted == {"Conv2d": 5, "Linear": 3}
    assert report.total == 8
    assert report.names[-1] == "classifier.6"


def test_layered_net_shares_parameters_and_counts() -> None:
    torch.manual_seed(0)
    net = build_fc(FCParams(hidden=[8, 8]), DataShape("mnist", (1, 4, 4), 3, 10, 10))
    params = {n: p for n, p in net.named_parameters()}
    x = torch.rand(5, 1, 4, 4)
    before = net(x)
    report = convert_to_feedback(net, fa, keep_bp=[output_module(net)])
    assert report.converted == {"Linear": 2} and report.kept_bp == ["layers.2.op"]
    assert all(isinstance(net.layers[i].op, FeedbackLinear) for i in (0, 1))
    for n, p in net.named_parameters():
        assert p is params[n]  # the same Parameter objects: nothing is copied or re-initialised
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    assert output_module(net) is net.layers[2].op


def test_lc_conv_and_linear_in_one_model() -> None:
    model = small_net()
    report = convert_to_feedback(model, fa)
    assert report.converted == {"Conv2d": 1, "LocallyConnected2d": 1, "Linear": 1}
    assert isinstance(model[3], FeedbackLocallyConnected2d)
    assert model[3].out_size == (4, 4) and model[3].weight.shape == (4, 4, 3, 4, 3, 3)


def test_converting_twice_is_a_no_op_and_shared_modules_convert_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    report = convert_to_feedback(model, fa)
    assert report.converted == {"Linear": 1}
    assert model[0] is model[2] and isinstance(model[0], FeedbackLinear)
    assert convert_to_feedback(model, fa).total == 0


def test_subclasses_are_skipped_and_reported() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    report = convert_to_feedback(model, fa)
    assert report.total == 0 and "0.out_proj" in report.skipped


def test_bare_layer_is_a_clear_error() -> None:
    with pytest.raises(BioscaleError, match="wrap it in a container"):
        convert_to_feedback(nn.Linear(2, 2), fa)


def test_state_dict_save_and_load() -> None:
    torch.manual_seed(1)
    src = small_net()
    convert_to_feedback(src, fa)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    torch.manual_seed(2)
    dst = small_net()
    convert_to_feedback(dst, fa)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf))
    for (n, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert "3.feedback.matrix" in dst.state_dict()


@pytest.mark.parametrize("make", [fa, lambda w: SignFeedback(0.1, w)])
def test_compile_fullgraph_matches_eager(make: object) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    convert_to_feedback(model, make)  # type: ignore[arg-type]
    x = torch.randn(2, 1, 6, 6)
    model(x).square().sum().backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).square().sum().backward()
    for a, p in zip(eager, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)


@pytest.mark.slow
def test_compile_fullgraph_inductor() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    convert_to_feedback(model, fa)
    x = torch.randn(4, 6)
    model(x).square().sum().backward()
    eager = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    torch.compile(model, fullgraph=True)(x).square().sum().backward()
    for a, p in zip(eager, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a)
