"""AM's shortcut for directions (repsub.optimize.own_direction): each image's own direction alone climbs exactly
the objective of the whole readout, with the same gradient, for every kind of encoder."""

import pytest
import torch

from repsub.capture.reader import LayerCapture
from repsub.core.bases.basis import Basis
from repsub.core.readout import LinearReadout
from repsub.optimize import OptimSettings, optimize_units
from repsub.optimize.objectives import climbed, pre_reduction
from repsub.optimize.own_direction import OwnDirection


def a_basis(encoder: str, channels: int, size: int, seed: int = 0) -> Basis:
    g = torch.Generator().manual_seed(seed)
    return Basis(
        kind={"linear": "pca", "relu": "nmf", "topk": "sae"}[encoder], layer=None, encoder=encoder,
        directions=torch.randn(size, channels, generator=g), encoder_weight=torch.randn(size, channels, generator=g),
        encoder_bias=torch.randn(size, generator=g) * 0.1, center=torch.rand(channels, generator=g),
        top_k=8 if encoder == "topk" else None, name="b",
    )  # fmt: skip


@pytest.mark.parametrize(("name", "size"), [("conv3", 64), ("fc5", 48)])
@pytest.mark.parametrize("encoder", ["linear", "relu", "topk", "vectors"])
@pytest.mark.parametrize("own_term", ["hybrid", "post", "pre"])
def test_the_own_direction_gives_the_whole_readouts_objective_and_gradient(shallow_random, name, size, encoder,
                                                                           own_term):  # fmt: skip
    layer = shallow_random.layer(name)
    if encoder == "vectors":
        g = torch.Generator().manual_seed(3)
        readout = LinearReadout(torch.randn(size, layer.n_units, generator=g), torch.randn(size, generator=g))
    else:
        readout = a_basis(encoder, layer.n_units, size)
        readout.layer = name
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with torch.no_grad(), LayerCapture(shallow_random.module, [layer], readouts={name: readout}) as capture:
        strongest = capture(images).activations[name].argmax(1)  # directions that respond (a topk keeps them)
    # A direction twice (each image reads its own copy), and two images' strongest direction.
    targets = torch.tensor([3, 17, int(strongest[2]), int(strongest[3]), 17])
    pre_reduce = pre_reduction(own_term, "mean")

    def objective(read, index):
        with LayerCapture(shallow_random.module, [layer], pre=own_term != "post", pre_reduce=pre_reduce if own_term != "post" else None,
                          readouts={name: read}) as capture:  # fmt: skip
            got = capture(images)
        value = climbed("am", got.activations[name], (got.pre or {}).get(name), index, own_term)
        return value, torch.autograd.grad(value.sum(), images)[0]

    whole, whole_grad = objective(readout, targets)
    own, own_grad = objective(OwnDirection(readout, targets, own_term == "pre"), torch.zeros_like(targets))
    assert (whole != 0).any()  # the case is not vacuous
    torch.testing.assert_close(own, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(own_grad, whole_grad, rtol=1e-4, atol=1e-7)


def test_the_topk_margin_is_what_a_direction_must_gain_to_enter_the_top_k():
    """Against a brute force: t_j, the k-th largest of the others, by sorting the others of each direction."""
    from repsub.core.bases.basis import topk_margin

    pre = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pre[0, 0, :4] = 2.0  # ties at the threshold
    margin = topk_margin(pre, 4)
    flat, got = pre.reshape(-1, 12), margin.reshape(-1, 12)
    for row, values in enumerate(flat):
        for j in range(12):
            others = torch.cat([values[:j], values[j + 1 :]])
            t = torch.sort(others, descending=True).values[3]
            assert got[row, j] == min(values[j], values[j] - t)
    # Where the margin is > 0 the encoder keeps y (no ties there); where it is < 0 it does not.
    z = torch.relu(pre)
    kept = torch.zeros_like(z).scatter(-1, torch.topk(z, 4, dim=-1).indices, 1.0) * (pre > 0)
    assert (kept[margin > 0] == 1).all() and (kept[margin < 0] == 0).all()
    assert torch.equal(topk_margin(pre, 12), pre)  # every positive kept: y itself


def test_am_of_directions_with_the_shortcut_ends_where_the_whole_readout_does(shallow_random, monkeypatch):
    layer = shallow_random.layer("conv3")
    readout = a_basis("topk", layer.n_units, 96)
    readout.layer = "conv3"
    settings = OptimSettings(steps=6, image_size=24, batch_size=4, precision="fp32")
    fast = optimize_units(
        shallow_random, layer, [0, 5, 9, 50], "am", settings, progress=False, readout=readout
    )
    monkeypatch.setattr(OwnDirection, "applies", staticmethod(lambda readout: False))
    whole = optimize_units(
        shallow_random, layer, [0, 5, 9, 50], "am", settings, progress=False, readout=readout
    )
    # Float rounding apart, the same climb: the images agree to a grey level or so after 6 steps.
    assert abs(fast.images.astype(int) - whole.images.astype(int)).mean() < 0.5
    assert (fast.images == whole.images).mean() > 0.9
