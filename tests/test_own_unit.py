"""AM's shortcut (repsub.optimize.own_unit): the target layer computed for each image's own unit only climbs
exactly the objective of the whole layer, with the same gradient."""

import pytest
import torch

from repsub.capture.precision import prepare_for_speed
from repsub.capture.reader import LayerCapture
from repsub.optimize.objectives import climbed, pre_reduction
from repsub.optimize.own_unit import OwnUnit


@pytest.mark.parametrize(("name", "kind"), [("conv2_2", "conv"), ("conv5_3", "conv"), ("fc7", "linear")])
@pytest.mark.parametrize("own_term", ["hybrid", "post", "pre"])
def test_the_own_unit_gives_the_whole_layers_objective_and_gradient(vgg16_random, name, kind, own_term):
    layer = vgg16_random.layer(name)
    units = torch.tensor([3, 17, 40, 5, 17])  # a unit twice: each image reads its own copy
    shortcut = OwnUnit.find(vgg16_random.module, layer, len(units))
    assert shortcut is not None and shortcut.kind == kind
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    pre_reduce = pre_reduction(own_term, "mean")  # hybrid: the max over positions while silent
    got = LayerCapture(vgg16_random.module, [layer], pre=True, pre_reduce=pre_reduce)(images)
    post, pre = got.activations, got.pre
    whole = climbed("am", post[name], pre[name], units, own_term)
    (whole_grad,) = torch.autograd.grad(whole.sum(), images)
    post, pre = shortcut.read(images, units, "mean", pre_reduce)
    own = climbed("am", post, pre, torch.zeros_like(units), own_term)
    (own_grad,) = torch.autograd.grad(own.sum(), images)
    torch.testing.assert_close(own, whole, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(own_grad, whole_grad, rtol=1e-4, atol=1e-8)


def test_the_shortcut_applies_only_where_it_saves_work(vgg16_random, shallow_random):
    conv1_2 = vgg16_random.layer("conv1_2")  # 64 units
    assert OwnUnit.find(vgg16_random.module, conv1_2, 63) is not None
    assert (
        OwnUnit.find(vgg16_random.module, conv1_2, 64) is None
    )  # a batch as large as the layer: nothing saved
    assert OwnUnit.find(vgg16_random.module, vgg16_random.layer("fc8"), 4) is None  # logits: no ReLU
    assert OwnUnit.find(shallow_random.module, shallow_random.layer("conv2"), 4) is not None


def test_channels_last_models_and_other_reductions_too(shallow_random):
    model = shallow_random.module
    layer = shallow_random.layer("conv4")
    prepare_for_speed(model, "cpu")  # as the optimization runs it
    units = torch.tensor([0, 9, 100])
    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    images = images.contiguous(memory_format=torch.channels_last)
    own, _ = OwnUnit.find(model, layer, 3).read(images, units, "max")
    whole = LayerCapture(model, [layer], reduce="max")(images).activations[layer.name]
    torch.testing.assert_close(own.squeeze(1), whole.gather(1, units.view(-1, 1)).squeeze(1))
