"""``summarize``: shapes, parameter counts and the computed memory of one training step."""

from __future__ import annotations

from bioscale.data.base import DataShape
from bioscale.models.summary import render, summarize
from bioscale.spec import ArchSpec

MNIST = DataShape("mnist", (1, 28, 28), 10, 60000, 10000)
IMAGENET = DataShape("imagenet", (3, 224, 224), 1000, 1281167, 50000)
F32 = 4


def test_fc_summary_counts_every_byte():
    s = summarize(ArchSpec(name="fc"), MNIST, batch_size=128)
    params = (784 * 256 + 256) + 4 * (256 * 256 + 256) + (256 * 10 + 10)
    assert s.total_params == s.trainable_params == params
    assert [(r.name, r.kind, r.output_shape) for r in s.layers] == [
        (f"layers.{i}.op", "Linear", (256,)) for i in range(5)] + [("layers.5.op", "Linear", (10,))]
    assert s.param_bytes == s.grad_bytes == params * F32
    assert s.optimizer_bytes == 2 * params * F32  # Adam's m and v
    # autograd keeps the input batch (for layer 0's weight gradient) and each tanh output (for tanh's own
    # backward and, the same storage, the next layer's weight gradient); the logits are not saved.
    assert s.activation_bytes == 128 * (784 + 5 * 256) * F32
    assert s.total_bytes == 4 * params * F32 + s.activation_bytes


def test_lc_summary_saves_inputs_not_unfolded_inputs():
    s = summarize(ArchSpec(name="lc"), MNIST, batch_size=64)
    assert [r.output_shape for r in s.layers] == [(32, 14, 14), (64, 7, 7), (1024,), (10,)]
    assert [r.params for r in s.layers] == [
        14 * 14 * 32 * 9 + 32 * 14 * 14, 7 * 7 * 64 * 32 * 9 + 64 * 7 * 7, 3136 * 1024 + 1024, 10250]
    # x, h1, h2, h3: lc2d saves its (folded) input, never the 9x larger unfolded one
    assert s.activation_bytes == 64 * (784 + 32 * 14 * 14 + 64 * 7 * 7 + 1024) * F32


def test_imagenet_lc_is_summarised_without_allocating_it():
    s = summarize(ArchSpec(name="lc"), IMAGENET, batch_size=256)
    assert s.total_params == 259_859_368
    assert s.layers[0].output_shape == (48, 56, 56) and s.layers[-1].output_shape == (1000,)


def test_resnet_and_alexnet_rows_and_render():
    s = summarize(ArchSpec(name="resnet18"), IMAGENET, batch_size=2)
    assert s.total_params == 11_689_512
    rows = {r.name: r for r in s.layers}
    assert rows["conv1"].output_shape == (64, 112, 112) and rows["maxpool"].output_shape == (64, 56, 56)
    assert rows["fc"].output_shape == (1000,) and rows["fc"].params == 512 * 1000 + 1000
    assert s.activation_bytes > 0
    text = render(summarize(ArchSpec(name="alexnet"), DataShape("cifar10", (3, 32, 32), 10, 1, 1), 32))
    assert "alexnet for cifar10 input 3x32x32, 10 classes, batch 32" in text
    assert "Adam state" in text and "saved activations" in text and "classifier.6" in text
