"""Readouts in the capture layer (issue 18, step 1): a layer read through a basis, per position, then reduced;
its pre-activations; the unit basis bit for bit; several bases and the units in one selectivity pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from repsub.capture.reader import LayerCapture
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.core.readout import LinearReadout, Readout, StackedReadout, UnitReadout
from repsub.errors import UsageError
from repsub.models import UnitLayer
from tests.capture_helpers import small_net


class ReluEncoder:
    """A nonlinear readout (an SAE's encoder): response relu(x W^T + b), pre-activation x W^T + b."""

    name, layer, kind, signed = "sae", None, "sae", False

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias
        self.K, self.C = weight.shape

    def encode(self, x):
        pre = x @ self.weight.T + self.bias
        return torch.relu(pre), pre

    def decode(self, z):
        return z @ self.weight

    def content_hash(self):
        return "sae"


def test_readouts_follow_the_protocol():
    for readout in (
        UnitReadout(4),
        LinearReadout(torch.eye(4)),
        ReluEncoder(torch.ones(2, 4), torch.zeros(2)),
    ):
        assert isinstance(readout, Readout)


@pytest.mark.parametrize("reduce", ["mean", "max", "center"])
def test_the_unit_readout_captures_exactly_the_units(reduce):
    model, layers = small_net()
    x = torch.randn(3, 3, 5, 5)
    readouts = {layer.name: UnitReadout(layer.n_units, layer.name) for layer in layers}
    with torch.no_grad():
        plain = LayerCapture(model, layers, reduce=reduce, pre=True, pre_reduce="max")(x)
        read = LayerCapture(model, layers, reduce=reduce, pre=True, pre_reduce="max", readouts=readouts)(x)
    for name in plain.activations:
        assert torch.equal(plain.activations[name], read.activations[name]), name
    assert set(plain.pre) == set(read.pre) == {"c", "f"}
    for name in plain.pre:
        assert torch.equal(plain.pre[name], read.pre[name]), name


@pytest.mark.parametrize("reduce", ["mean", "max", "center"])
@pytest.mark.parametrize("pre", [True, False])  # without pre, mean and centre encode the reduced values once
def test_a_linear_readout_is_encoded_per_position_then_reduced(reduce, pre):
    model, layers = small_net()
    conv, fc = layers[0], layers[1]
    directions = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(5, generator=torch.Generator().manual_seed(2))
    fc_directions = torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    x = torch.randn(3, 3, 5, 5)
    readouts = {"c": LinearReadout(directions, bias, name="pca"), "f": LinearReadout(fc_directions)}
    with torch.no_grad():
        got = LayerCapture(model, [conv, fc], reduce=reduce, pre=pre, readouts=readouts)(x)
        conv_pre = model[0](x)  # by hand, no hooks, no inplace op
        fc_pre = model[3](torch.relu(conv_pre).flatten(1))
    # Every position's 4 channels through the 5 directions: [B, 5, H, W], then reduced over space.
    response = torch.einsum("kc,bchw->bkhw", directions, torch.relu(conv_pre)) + bias.view(1, 5, 1, 1)
    response_pre = torch.einsum("kc,bchw->bkhw", directions, conv_pre) + bias.view(1, 5, 1, 1)
    reduced = {"mean": lambda t: t.mean(dim=(2, 3)), "max": lambda t: t.amax(dim=(2, 3)),
               "center": lambda t: t[:, :, 2, 2]}[reduce]  # fmt: skip
    torch.testing.assert_close(got.activations["c"], reduced(response))
    torch.testing.assert_close(got.activations["f"], torch.relu(fc_pre) @ fc_directions.T)
    if not pre:
        return
    torch.testing.assert_close(got.pre["c"], reduced(response_pre))  # the pre-ReLU map, encoded, then reduced
    torch.testing.assert_close(got.pre["f"], fc_pre @ fc_directions.T)
    assert (reduced(response_pre) < reduced(response)).any()  # the pre-activation is not the response


def test_full_maps_and_the_max_pre_reduction_keep_their_gradient():
    model, layers = small_net()
    conv = layers[0]
    directions = torch.randn(3, 4, generator=torch.Generator().manual_seed(4))
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    readouts = {"c": LinearReadout(directions)}
    maps = LayerCapture(model, [conv], reduce=None, readouts=readouts)(x).activations["c"]
    got = LayerCapture(model, [conv], reduce="mean", pre=True, pre_reduce="max", readouts=readouts)(x)
    by_hand = torch.einsum("kc,bchw->bkhw", directions, model[0](x))
    torch.testing.assert_close(maps, torch.einsum("kc,bchw->bkhw", directions, torch.relu(model[0](x))))
    torch.testing.assert_close(got.pre["c"], by_hand.amax(dim=(2, 3)))
    (grad,) = torch.autograd.grad(got.pre["c"].sum(), x)
    (expected,) = torch.autograd.grad(by_hand.amax(dim=(2, 3)).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_a_nonlinear_readout_gives_its_own_pre_activation():
    model, layers = small_net()
    weight = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    bias = torch.full((3,), -0.5)
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        got = LayerCapture(model, [layers[1]], pre=True, readouts={"f": ReluEncoder(weight, bias)})(x)
        fc = torch.relu(model[3](torch.relu(model[0](x)).flatten(1)))
    torch.testing.assert_close(got.pre["f"], fc @ weight.T + bias)
    torch.testing.assert_close(got.activations["f"], torch.relu(fc @ weight.T + bias))


def test_token_and_channels_last_layers_are_read_per_token_and_position():
    tokens = UnitLayer("t", 3, "0", "tokens", read="module")
    nhwc = UnitLayer("n", 3, "0", "nhwc", read="module")
    model = nn.Sequential(nn.Identity())
    directions = torch.randn(2, 3, generator=torch.Generator().manual_seed(6))
    readout = {"t": LinearReadout(directions)}
    x = torch.randn(2, 5, 3)
    got = LayerCapture(model, [tokens], reduce="max", readouts=readout)(x).activations["t"]
    torch.testing.assert_close(got, (x @ directions.T).amax(dim=1))
    y = torch.randn(2, 4, 6, 3)
    got = LayerCapture(model, [nhwc], reduce="center", readouts={"n": LinearReadout(directions)})(y)
    torch.testing.assert_close(got.activations["n"], y[:, 2, 3, :] @ directions.T)


def test_readouts_of_the_wrong_width_or_layer_are_refused():
    model, layers = small_net()
    with pytest.raises(UsageError, match="reads 5 values per position; layer c has 4"):
        LayerCapture(model, layers, readouts={"c": LinearReadout(torch.eye(5))})
    with pytest.raises(UsageError, match="fitted to layer f, not c"):
        LayerCapture(model, layers, readouts={"c": LinearReadout(torch.eye(4), layer="f")})
    with pytest.raises(ValueError, match="not captured"):
        LayerCapture(model, layers[:1], readouts={"f": LinearReadout(torch.eye(6))})


class Batches:
    def __init__(self, n=4):
        gen = torch.Generator().manual_seed(7)
        self.items = [
            (torch.randn(5, 3, 5, 5, generator=gen), torch.tensor([0, 1, 2, 0, 1])) for _ in range(n)
        ]

    def __iter__(self):
        return iter(self.items)


def test_one_pass_serves_the_units_and_several_bases_of_a_layer():
    from repsub.models import from_module

    module, layers = small_net()
    model = from_module(module, ["1", "4"], 5, (0.5,) * 3, (0.5,) * 3)
    conv = model.layer(model.layers[0].name)
    pca = LinearReadout(torch.randn(3, 4, generator=torch.Generator().manual_seed(8)), name="pca")
    ica = LinearReadout(torch.randn(2, 4, generator=torch.Generator().manual_seed(9)), name="ica")
    stacked = StackedReadout([UnitReadout(4), pca, ica])
    together = accumulate_class_sums(
        model, [conv], Batches(), 3, progress=False, readouts={conv.name: stacked}
    )
    means = together.class_means(conv.name)
    assert means.shape == (3, 4 + 3 + 2)
    for readout in (None, pca, ica):
        alone = accumulate_class_sums(
            model, [conv], Batches(), 3, progress=False, readouts={conv.name: readout} if readout else None
        )
        part = stacked.slices["unit" if readout is None else readout.name]
        # Bit for bit: the capture reduces each part alone (a reduction over the stacked tensor sums in
        # another order).
        assert torch.equal(means[:, part], alone.class_means(conv.name))
