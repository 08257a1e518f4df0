import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repsub.capture.reader import Captured, LayerCapture
from repsub.errors import UsageError
from repsub.models import UnitLayer
from tests.capture_helpers import small_net, small_net_by_hand


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
        captured = LayerCapture(vgg16_random.module, vgg16_random.layers)(x).activations
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
        maps = LayerCapture(model, [pre_relu], reduce=None, stop=False)(x).activations["pre"]
        means = LayerCapture(model, [pre_relu], reduce="mean", stop=False)(x).activations["pre"]
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
            cut = LayerCapture(vgg16_random.module, [layer])(x).activations["conv3_1"]
            assert calls == []  # nothing past conv3_1 ran
            full = LayerCapture(vgg16_random.module, [layer], stop=False)(x).activations["conv3_1"]
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
        got = LayerCapture(model, [layer], reduce=reduce)(x).activations["c"]
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
        got = LayerCapture(model, [conv, fc, logits], reduce=reduce, pre=True)(x)
        post, pre = got.activations, got.pre
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
    pre = LayerCapture(model, [conv], reduce=reduce, pre=True, pre_reduce="max")(x).pre
    by_hand = model[0](x)
    torch.testing.assert_close(pre["c"], by_hand.amax(dim=(2, 3)))
    (grad,) = torch.autograd.grad(pre["c"].sum(), x)
    (expected,) = torch.autograd.grad(by_hand.amax(dim=(2, 3)).sum(), x)
    torch.testing.assert_close(grad, expected)
    with pytest.raises(UsageError, match="pre-activation reduction 'top'"):
        LayerCapture(model, [conv], pre=True, pre_reduce="top")


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
        got = LayerCapture(model, [layer], pre=True)(x)
        post, pre = got.activations, got.pre
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
        got = LayerCapture(model, [conv, relu], pre=True)(x)  # stops after the second call of relu
        post, pre = got.activations, got.pre
    torch.testing.assert_close(post["conv"], second.mean(dim=(2, 3)))
    torch.testing.assert_close(post["relu"], torch.relu(second).mean(dim=(2, 3)))
    torch.testing.assert_close(pre["relu"], second.mean(dim=(2, 3)))  # the relu's input on its last call
    assert not torch.allclose(post["conv"], first.mean(dim=(2, 3)))


def test_a_forward_that_calls_a_module_another_number_of_times_is_an_error():
    layer = UnitLayer("conv", 2, "conv", "conv", read="module", calls=3)
    with pytest.raises(RuntimeError, match=r"conv \(module conv ran 2 time\(s\), its catalog expects 3\)"):
        LayerCapture(TwiceConv(), [layer], stop=False)(torch.randn(1, 3, 8, 8))


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
        LayerCapture(nn.Sequential(nn.Identity()), [layer], reduce="center")


@pytest.mark.parametrize("pre", [False, True])
@pytest.mark.parametrize("output", [False, True])
def test_the_result_holds_what_was_asked_for(pre, output):
    model, layers = small_net()
    x = torch.randn(3, 3, 5, 5)
    with torch.no_grad():
        hand = small_net_by_hand(model, x)
        got = LayerCapture(model, layers[:2], pre=pre, output=output)(x)
    assert isinstance(got, Captured)
    assert list(got.activations) == ["c", "f"]
    torch.testing.assert_close(got.activations["c"], torch.relu(hand["conv_pre"]).mean(dim=(2, 3)))
    torch.testing.assert_close(got.activations["f"], hand["fc"])
    if pre:
        assert set(got.pre) == {"c", "f"}
        torch.testing.assert_close(got.pre["c"], hand["conv_pre"].mean(dim=(2, 3)))
        torch.testing.assert_close(got.pre["f"], hand["fc_pre"])
    else:
        assert got.pre is None
    if output:  # the forward ran past f, to the logits
        torch.testing.assert_close(got.output, hand["logits"])
    else:
        assert got.output is None


def test_layers_without_a_relu_have_no_pre_activation():
    model, layers = small_net()
    got = LayerCapture(model, layers[2:], pre=True)(torch.randn(2, 3, 5, 5))
    assert got.pre == {} and set(got.activations) == {"l"}


def hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def test_hooks_are_registered_for_the_with_block_and_removed_after_it_even_when_the_forward_raises():
    model, layers = small_net()
    before = hook_counts(model)
    capture = LayerCapture(model, layers, pre=True)
    with pytest.raises(RuntimeError, match="channels"), capture:  # a conv fed 2 channels where it expects 3
        assert sum(f for f, _ in hook_counts(model)) == 3 and sum(p for _, p in hook_counts(model)) == 2
        capture(torch.randn(2, 3, 5, 5))
        capture(torch.randn(2, 2, 5, 5))
    assert hook_counts(model) == before
    with pytest.raises(RuntimeError, match="channels"):  # called outside a `with`: registered for the call
        capture(torch.randn(2, 2, 5, 5))
    assert hook_counts(model) == before

    def broken(_output):
        raise ValueError("broken edit")

    with (
        pytest.raises(ValueError, match="broken edit"),
        LayerCapture(model, layers, edits={"f": broken}) as bad,
    ):
        bad(torch.randn(2, 3, 5, 5))
    assert hook_counts(model) == before


def test_one_with_block_serves_many_batches_as_separate_calls_do():
    model, layers = small_net()
    batches = [torch.randn(b, 3, 5, 5, generator=torch.Generator().manual_seed(b)) for b in (1, 3, 2)]
    with torch.no_grad():
        separate = [LayerCapture(model, layers, reduce="max", pre=True)(x) for x in batches]
        with LayerCapture(model, layers, reduce="max", pre=True) as capture:
            together = [capture(x) for x in batches]
            plain = model(batches[0])  # a forward that is not the capture's: untouched, not stopped
        hands = [small_net_by_hand(model, x) for x in batches]
    torch.testing.assert_close(plain, hands[0]["logits"])
    for one, many, hand in zip(separate, together, hands, strict=True):
        for name in ("c", "f", "l"):
            torch.testing.assert_close(many.activations[name], one.activations[name], rtol=0, atol=0)
        for name in ("c", "f"):
            torch.testing.assert_close(many.pre[name], one.pre[name], rtol=0, atol=0)
        torch.testing.assert_close(many.activations["c"], torch.relu(hand["conv_pre"]).amax(dim=(2, 3)))
        torch.testing.assert_close(many.pre["f"], hand["fc_pre"])
        torch.testing.assert_close(many.activations["l"], hand["logits"])


def test_an_edit_with_the_output_equals_a_forward_with_the_edit_made_by_hand():
    model, layers = small_net()
    x = torch.randn(4, 3, 5, 5)

    def silence_unit_2(output):
        edited = output.clone()
        edited[:, 2] = 0
        return edited

    with torch.no_grad():
        hand = small_net_by_hand(model, x, edit=silence_unit_2)
        intact = small_net_by_hand(model, x)
        with LayerCapture(model, layers[1:2], output=True, edits={"f": silence_unit_2}) as capture:
            got = capture(x)
    assert (intact["fc"][:, 2] > 0).any()  # the edit changes something
    assert not torch.allclose(hand["logits"], intact["logits"])
    torch.testing.assert_close(got.output, hand["logits"])
    torch.testing.assert_close(got.activations["f"], hand["fc"])  # the edited output is what is captured


def test_invalid_settings_are_refused_naming_the_value():
    model, layers = small_net()
    with pytest.raises(UsageError, match="unknown reduction 'median'; valid reductions: mean, max, center"):
        LayerCapture(model, layers, reduce="median")
    with pytest.raises(ValueError, match="needs pre=True"):
        LayerCapture(model, layers, pre_reduce="max")
    with pytest.raises(ValueError, match=r"edits of layer\(s\) \['g'\] that are not captured"):
        LayerCapture(model, layers, edits={"g": lambda o: o})
    capture, before = LayerCapture(model, layers), hook_counts(model)
    with capture, pytest.raises(RuntimeError, match="already in a `with` block"), capture:  # entered twice
        pass
    assert hook_counts(model) == before
