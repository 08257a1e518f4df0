import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repsub.capture.reader import LayerReader
from repsub.errors import UsageError
from repsub.models import UnitLayer


def manual_vgg_units(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Post-ReLU unit activations of VGG16 computed by hand, without hooks and without inplace ops."""
    names = iter(
        [
            "conv1_1",
            "conv1_2",
            "conv2_1",
            "conv2_2",
            "conv3_1",
            "conv3_2",
            "conv3_3",
            "conv4_1",
            "conv4_2",
            "conv4_3",
            "conv5_1",
            "conv5_2",
            "conv5_3",
        ]
    )
    out = {}
    for module in model.features:
        if isinstance(module, nn.ReLU):
            x = F.relu(x)
            out[next(names)] = x.mean(dim=(2, 3))
        else:
            x = module(x)
    x = torch.flatten(model.avgpool(x), 1)
    c = model.classifier
    out["fc6"] = F.relu(c[0](x))
    out["fc7"] = F.relu(c[3](out["fc6"]))
    out["fc8"] = c[6](out["fc7"])
    return out


def test_capture_equals_manual_forward(vgg16_random):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        captured = LayerReader(vgg16_random.module, vgg16_random.layers)(x)
        expected = manual_vgg_units(vgg16_random.module, x)
    assert list(captured) == list(expected)
    for name in expected:
        torch.testing.assert_close(captured[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert (captured["fc8"] < 0).any()  # logits are read before any ReLU


def test_capture_is_unharmed_by_a_later_inplace_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1))
    pre_relu = UnitLayer("pre", 4, "0", "conv", read="module")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model[0](x)
        maps = LayerReader(model, [pre_relu], reduce=None, stop=False)(x)["pre"]
        means = LayerReader(model, [pre_relu], reduce="mean", stop=False)(x)["pre"]
    assert (expected < 0).any()  # the inplace ReLU would have zeroed these
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(means, expected.mean(dim=(2, 3)))


def test_cut_forward_equals_full_forward_and_stops(vgg16_random):
    layer = vgg16_random.layer("conv3_1")
    calls = []
    handle = vgg16_random.module.classifier.register_forward_hook(lambda *_: calls.append("classifier"))
    deeper = vgg16_random.module.features[12].register_forward_hook(lambda *_: calls.append("conv3_2"))
    try:
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            cut = LayerReader(vgg16_random.module, [layer])(x)["conv3_1"]
            assert calls == []  # nothing past conv3_1 ran
            full = LayerReader(vgg16_random.module, [layer], stop=False)(x)["conv3_1"]
            assert "classifier" in calls
    finally:
        handle.remove()
        deeper.remove()
    torch.testing.assert_close(cut, full, rtol=0, atol=0)


@pytest.mark.parametrize("reduce", ["max", "center"])
def test_other_reductions(reduce):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    layer = UnitLayer("c", 4, "1", "conv", read="relu", relu="1")
    x = torch.randn(2, 3, 5, 6)
    with torch.no_grad():
        got = LayerReader(model, [layer], reduce=reduce)(x)["c"]
        maps = model(x)
    expected = maps.amax(dim=(2, 3)) if reduce == "max" else maps[:, :, 2, 3]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("reduce", ["mean", "max", "center"])
def test_pre_activation_is_the_relu_input_despite_inplace_relus(reduce):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 25, 6),
        nn.ReLU(inplace=True), nn.Linear(6, 2),
    )  # fmt: skip
    conv = UnitLayer("c", 4, "1", "conv", read="relu", relu="1")
    fc = UnitLayer("f", 6, "4", "linear", read="relu", relu="4")
    logits = UnitLayer("l", 2, "5", "linear", read="logits")
    x = torch.randn(3, 3, 5, 5)
    with torch.no_grad():
        conv_pre = model[0](x)
        fc_pre = model[3](torch.relu(conv_pre).flatten(1))
        post, pre = LayerReader(model, [conv, fc, logits], reduce=reduce).read(x)
    reduced = {
        "mean": conv_pre.mean(dim=(2, 3)),
        "max": conv_pre.amax(dim=(2, 3)),
        "center": conv_pre[:, :, 2, 2],
    }
    assert (conv_pre < 0).any() and (fc_pre < 0).any()  # the inplace ReLUs would have zeroed these
    torch.testing.assert_close(pre["c"], reduced[reduce])
    torch.testing.assert_close(pre["f"], fc_pre)
    torch.testing.assert_close(post["f"], torch.relu(fc_pre))
    assert set(pre) == {"c", "f"}  # logits have no pre-activation


@pytest.mark.parametrize("reduce", ["mean", "max", "center"])
def test_pre_activations_reduced_their_own_way_keep_their_gradient_through_inplace_relus(reduce):
    """The optimizer reads a silent conv unit's pre-activation at its highest position (pre_reduce="max")
    while the units stay spatial means; the inplace ReLU after it must not spoil the max's backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1))
    conv = UnitLayer("c", 4, "1", "conv", read="relu", relu="1")
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    post, pre = LayerReader(model, [conv], reduce=reduce, pre_reduce="max").read(x)
    by_hand = model[0](x)
    torch.testing.assert_close(pre["c"], by_hand.amax(dim=(2, 3)))
    (grad,) = torch.autograd.grad(pre["c"].sum(), x)
    (expected,) = torch.autograd.grad(by_hand.amax(dim=(2, 3)).sum(), x)
    torch.testing.assert_close(grad, expected)
    with pytest.raises(UsageError, match="pre-activation reduction 'top'"):
        LayerReader(model, [conv], pre_reduce="top")


def test_pre_activation_of_a_relu_called_twice_is_its_last_call():
    """A residual block calls one ReLU module twice: the block output's pre-activation is the last call's input."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x))) + x)

    torch.manual_seed(1)
    model = nn.Sequential(Block())
    layer = UnitLayer("block", 2, "0", "conv", read="block", relu="0.relu")
    x = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        block = model[0]
        last_input = block.b(torch.relu(block.a(x))) + x
        post, pre = LayerReader(model, [layer]).read(x)
    torch.testing.assert_close(pre["block"], last_input.mean(dim=(2, 3)))
    torch.testing.assert_close(post["block"], torch.relu(last_input).mean(dim=(2, 3)))


class TwiceConv(nn.Module):
    """One conv module applied twice in a forward (weights shared across the two calls), then a head."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.relu = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        x = self.relu(self.conv(self.relu(self.conv(self.stem(x)))))
        return self.head(x.mean(dim=(2, 3)))


def test_a_module_called_twice_is_read_at_its_last_call():
    from repsub.models import from_module

    torch.manual_seed(2)
    model = TwiceConv()
    loaded = from_module(model, layers=["conv", "relu"], image_size=8)
    conv, relu = loaded.layer("conv"), loaded.layer("relu")
    assert (conv.calls, relu.calls) == (2, 2) and relu.read == "relu" and conv.read == "module"
    assert "last of 2 calls" in conv.describe_read()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        first = model.conv(model.stem(x))
        second = model.conv(torch.relu(first))  # computed by hand: the second call's output
        post, pre = LayerReader(model, [conv, relu]).read(x)  # stops after the second call of relu
    torch.testing.assert_close(post["conv"], second.mean(dim=(2, 3)))
    torch.testing.assert_close(post["relu"], torch.relu(second).mean(dim=(2, 3)))
    torch.testing.assert_close(pre["relu"], second.mean(dim=(2, 3)))  # the relu's input on its last call
    assert not torch.allclose(post["conv"], first.mean(dim=(2, 3)))


def test_a_forward_that_calls_a_module_another_number_of_times_is_an_error():
    layer = UnitLayer("conv", 2, "conv", "conv", read="module", calls=3)
    with pytest.raises(RuntimeError, match=r"conv \(module conv ran 2 time\(s\), its catalog expects 3\)"):
        LayerReader(TwiceConv(), [layer], stop=False)(torch.randn(1, 3, 8, 8))


def test_token_and_channels_last_reductions():
    from repsub.capture.reader import reduce_units
    from repsub.errors import UsageError

    tokens = torch.randn(2, 5, 3)  # [B, T, D]
    torch.testing.assert_close(reduce_units(tokens, "tokens", "mean"), tokens.sum(dim=1) / 5)
    torch.testing.assert_close(
        reduce_units(tokens, "tokens", "max"), torch.stack([t.max(0).values for t in tokens])
    )
    with pytest.raises(UsageError, match="center is not defined for token layers"):
        reduce_units(tokens, "tokens", "center")
    nhwc = torch.randn(2, 4, 6, 3)  # [B, H, W, C]
    torch.testing.assert_close(reduce_units(nhwc, "nhwc", "mean"), nhwc.mean(dim=(1, 2)))
    torch.testing.assert_close(reduce_units(nhwc, "nhwc", "max"), nhwc.amax(dim=(1, 2)))
    torch.testing.assert_close(reduce_units(nhwc, "nhwc", "center"), nhwc[:, 2, 3, :])
    layer = UnitLayer("t", 3, "0", "tokens", read="module")
    with pytest.raises(UsageError, match="center is not defined"):
        LayerReader(nn.Sequential(nn.Identity()), [layer], reduce="center")
