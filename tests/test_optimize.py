from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from repsub.capture.reader import LayerCapture
from repsub.core.rs import representative_substitution, rs_ties
from repsub.models import load_model
from repsub.optimize import OptimSettings, UnitProgress, optimize_units, unit_seed
from repsub.optimize.objectives import activation, inter_unit
from repsub.optimize.param import FourierImage, PixelImage
from repsub.optimize.render import unit_status
from repsub.runstore.tables import decode_png, png_bytes

SMALL = OptimSettings(steps=6, image_size=24, batch_size=8, lr=0.05)


def test_iam_hand_computed():
    layer = torch.tensor([[3.0, 1.0, 2.0], [0.0, 4.0, 1.0]])
    units = torch.tensor([0, 2])
    assert activation(layer, units).tolist() == [3.0, 1.0]
    assert inter_unit(layer, units).tolist() == [3.0 - 1.5, 1.0 - 2.0]


@pytest.mark.parametrize("method", [activation, inter_unit])
def test_batched_objective_gradient_equals_per_unit_gradients(vgg16_random, method):
    layer = vgg16_random.layer("conv2_1")
    units = torch.tensor([0, 5, 17, 100])
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    with LayerCapture(vgg16_random.module, [layer]) as capture:
        method(capture(images).activations[layer.name], units).sum().backward()
        for b in range(4):
            single = images[b : b + 1].detach().clone().requires_grad_(True)
            method(capture(single).activations[layer.name], units[b : b + 1]).sum().backward()
            torch.testing.assert_close(images.grad[b : b + 1], single.grad, rtol=1e-4, atol=1e-7)


def test_unit_seed_depends_on_run_layer_and_unit_only():
    assert unit_seed(0, "conv1", 3) == unit_seed(0, "conv1", 3)
    assert (
        len(
            {
                unit_seed(0, "conv1", 3),
                unit_seed(1, "conv1", 3),
                unit_seed(0, "conv2", 3),
                unit_seed(0, "conv1", 4),
            }
        )
        == 4
    )


@pytest.mark.parametrize("param", [PixelImage, FourierImage])
def test_parameterization_start_depends_only_on_own_generator(param):
    def start(seeds):
        return param([torch.Generator().manual_seed(s) for s in seeds], 16, torch.device("cpu"))().detach()

    both = start([11, 22])
    assert both.shape == (2, 3, 16, 16) and both.min() >= 0 and both.max() <= 1
    torch.testing.assert_close(both[1:], start([22]), rtol=0, atol=0)


def test_optimization_raises_the_objective(shallow_random):
    layer = shallow_random.layer("conv3")
    units = [0, 1, 2, 3]
    short = optimize_units(
        shallow_random, layer, units, "am", OptimSettings(steps=1, image_size=24), progress=False
    )
    long = optimize_units(
        shallow_random, layer, units, "am", OptimSettings(steps=40, image_size=24), progress=False
    )
    assert (long.activation > short.activation).mean() >= 0.75


def test_same_seed_same_result_and_seed_changes_it(shallow_random):
    layer = shallow_random.layer("conv2")
    a = optimize_units(shallow_random, layer, [1, 2, 3], "iam", SMALL, run_seed=5, progress=False)
    b = optimize_units(shallow_random, layer, [1, 2, 3], "iam", SMALL, run_seed=5, progress=False)
    c = optimize_units(shallow_random, layer, [1, 2, 3], "iam", SMALL, run_seed=6, progress=False)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.layer_activations, b.layer_activations)
    assert not np.array_equal(a.images, c.images)


def test_a_units_result_does_not_depend_on_its_batch(vgg16_random):
    """Unit 7's image, computed with different batch-mates and batch sizes. On CPU the convolution's
    blocking can change with the batch size, so equality is up to float rounding: images within one
    8-bit level at a few pixels, activations within 1e-4 relative."""
    layer = vgg16_random.layer("conv2_2")
    settings = OptimSettings(steps=5, image_size=32, batch_size=8, param="fourier")
    alone = optimize_units(vgg16_random, layer, [7], "am", settings, progress=False)
    batched = optimize_units(vgg16_random, layer, [3, 7, 40, 90, 127], "am", settings, progress=False)
    split = optimize_units(
        vgg16_random,
        layer,
        [5, 7, 9],
        "am",
        OptimSettings(**{**settings.to_dict(), "batch_size": 2}),
        progress=False,
    )
    for other, index in ((batched, 1), (split, 1)):
        diff = np.abs(alone.images[0].astype(int) - other.images[index].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        np.testing.assert_allclose(
            other.layer_activations[index], alone.layer_activations[0], rtol=1e-4, atol=1e-5
        )
        assert other.seeds[index] == alone.seeds[0]


def test_recorded_activations_are_those_of_the_stored_image(shallow_random):
    layer = shallow_random.layer("fc5")
    result = optimize_units(shallow_random, layer, [0, 4, 9], "iam", SMALL, progress=False)
    stored = np.stack([decode_png(png_bytes(img)) for img in result.images])
    np.testing.assert_array_equal(stored, result.images)
    x = torch.from_numpy(stored).permute(0, 3, 1, 2).float() / 255
    mean, std = (
        torch.tensor(shallow_random.mean).view(1, 3, 1, 1),
        torch.tensor(shallow_random.std).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        again = LayerCapture(shallow_random.module, [layer])((x - mean) / std).activations["fc5"]
    np.testing.assert_allclose(result.layer_activations, again.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.activation, result.layer_activations[np.arange(3), [0, 4, 9]])
    rs = representative_substitution(torch.from_numpy(result.layer_activations), torch.tensor([0, 4, 9]))
    np.testing.assert_array_equal(result.rs, rs.numpy())


def test_non_finite_units_are_recorded_as_such(shallow_random):
    module = shallow_random.module
    saved = module.features[0].bias.clone()
    module.features[0].bias.fill_(float("nan"))
    try:
        result = optimize_units(
            shallow_random, shallow_random.layer("conv1"), [0, 1], "am", SMALL, progress=False
        )
    finally:
        module.features[0].bias.copy_(saved)
    assert result.status.tolist() == ["nonfinite", "nonfinite"]
    assert np.isnan(result.rs).all()


def test_status_and_ties_hand_computed():
    layer = torch.tensor([[0.0, 0.0, 0.0, 2.0], [1.0, 3.0, 1.0, 1.0], [float("nan"), 1.0, 0.5, 0.0]])
    units = torch.tensor([1, 0, 2])
    own = layer.gather(1, units.view(-1, 1)).squeeze(1)
    assert unit_status(layer, own) == ["no_response", "ok", "nonfinite"]
    # unit 1 of row 0 ties with units 0 and 2 (2 of 3 others); unit 0 of row 1 with units 2 and 3.
    np.testing.assert_array_equal(rs_ties(layer, units).numpy(), [2 / 3, 2 / 3, 0.0])
    np.testing.assert_array_equal(representative_substitution(layer, units).numpy(), [0.25, 0.25, 0.25])


def _dormant_channel_model():
    """A shallow CNN whose conv2 channel 5 has a large negative bias: its pre-activation is negative
    everywhere on its start image (by a margin of 1, with weights made 5x stronger so that images can
    still drive it), so its post-ReLU value is 0 with zero gradient."""
    model = load_model("shallow_cnn", "random", seed=0, num_classes=3)
    conv = model.module.features[2]
    conv.weight.data[5] *= 5
    start = FourierImage([torch.Generator().manual_seed(unit_seed(0, "conv2", 5))], 24, torch.device("cpu"))
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():
        highest = model.module.features[:3]((start() - mean) / std)[:, 5].max()
    conv.bias.data[5] -= highest + 1.0
    return model


def test_a_unit_that_starts_at_zero_is_driven_by_the_default_and_not_without_the_fix():
    model = _dormant_channel_model()
    layer = model.layer("conv2")
    settings = OptimSettings(steps=48, image_size=24, batch_size=4, precision="fp32")
    fixed = optimize_units(model, layer, [5, 6], "am", settings, progress=False)
    plain = optimize_units(model, layer, [5, 6], "am", replace(settings, own_term="post"), progress=False)
    assert settings.own_term == "hybrid"  # the default
    assert fixed.objective_start[0] == 0 and plain.objective_start[0] == 0  # the same dead start
    assert fixed.activation[0] > 0 and fixed.status[0] == "ok"
    assert plain.activation[0] == 0 and plain.status[0] == "no_response"
    assert plain.rs_ties[0] > 0  # it ties with the other units at 0
    # A unit that responds from the start climbs the same objective either way.
    np.testing.assert_allclose(fixed.activation[1], plain.activation[1], rtol=1e-5)
    # IAM is fixed the same way.
    iam = optimize_units(model, layer, [5], "iam", settings, progress=False)
    assert iam.status[0] == "ok"


def test_a_target_still_silent_is_rescued_by_more_rounds_and_the_others_are_untouched():
    """Unit 5 of the dormant model does not respond after 2 steps; the rescue goes on from its image, round
    by round (2 steps each), until it does. The units that responded keep their rows bit for bit, and the
    rescued unit's result depends on its seed alone, not on which units shared its batch."""
    model = _dormant_channel_model()
    layer = model.layer("conv2")
    settings = OptimSettings(steps=2, image_size=24, batch_size=4, precision="fp32", rescue_rounds=0)
    plain = optimize_units(model, layer, [5, 6, 1], "am", settings, progress=False)
    assert plain.status.tolist() == ["no_response", "ok", "ok"] and plain.steps.tolist() == [2, 2, 2]
    rescue = replace(settings, rescue_rounds=20)
    rescued = optimize_units(model, layer, [5, 6, 1], "am", rescue, progress=False)
    assert rescued.status.tolist() == ["ok", "ok", "ok"] and rescued.activation[0] > 0
    taken = int(rescued.steps[0])
    assert 2 < taken <= 2 * 21 and taken % 2 == 0 and rescued.steps[1:].tolist() == [2, 2]
    for field in ("images", "layer_activations", "activation", "rs", "objective_final"):
        np.testing.assert_array_equal(getattr(rescued, field)[1:], getattr(plain, field)[1:])
    assert not np.array_equal(rescued.images[0], plain.images[0])
    # One round fewer than it took: still silent, with the steps of every round it had.
    short = optimize_units(
        model, layer, [5], "am", replace(settings, rescue_rounds=taken // 2 - 2), progress=False
    )
    assert short.status[0] == "no_response" and short.steps[0] == taken - 2
    alone = optimize_units(model, layer, [5], "am", rescue, progress=False)
    np.testing.assert_array_equal(alone.images[0], rescued.images[0])
    assert alone.steps[0] == taken and alone.status[0] == "ok"
    # The recorded activation is that of the stored image, as for any row.
    x = torch.from_numpy(rescued.images[:1]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():
        again = LayerCapture(model.module, [layer])((x - mean) / std).activations["conv2"]
    np.testing.assert_allclose(rescued.layer_activations[:1], again.numpy(), rtol=1e-5, atol=1e-7)


def test_the_rescue_climbs_without_transforms_at_a_larger_step(monkeypatch):
    """The rescue rounds climb the objective as it is recorded (no random transforms) at RESCUE_LR_FACTOR x lr,
    on the silent images alone; the first round climbs every image with the run's transforms and lr."""
    from repsub.optimize import render

    calls, climb = [], render._Climber.climb

    def spy(self, image, warp, targets, steps, progress, lr):
        x = torch.rand(len(targets), 3, 24, 24, generator=torch.Generator().manual_seed(0))
        calls.append((targets.tolist(), torch.equal(warp(x, 0), x), lr))
        return climb(self, image, warp, targets, steps, progress, lr)

    monkeypatch.setattr(render._Climber, "climb", spy)
    model = _dormant_channel_model()
    settings = OptimSettings(
        steps=2, image_size=24, batch_size=4, precision="fp32", rescue_rounds=20, lr=0.04
    )
    result = optimize_units(model, model.layer("conv2"), [5, 6, 1], "am", settings, progress=False)
    assert calls[0] == ([5, 6, 1], False, 0.04)
    assert len(calls) == result.steps[0] // 2 > 1
    assert all(call == ([5], True, pytest.approx(0.04 * render.RESCUE_LR_FACTOR)) for call in calls[1:])


def test_recorded_objectives_are_the_methods_own(shallow_random):
    layer = shallow_random.layer("conv3")
    result = optimize_units(shallow_random, layer, [0, 3, 7], "iam", SMALL, progress=False)
    acts = torch.from_numpy(result.layer_activations)
    expected = inter_unit(acts, torch.tensor([0, 3, 7])).numpy()
    np.testing.assert_allclose(result.objective_final, expected, rtol=1e-6)
    assert (result.objective_final > result.objective_start).all()


def test_bf16_steps_agree_with_fp32(vgg16_random):
    """bf16 autocast for the steps only: the recorded forward stays fp32, and per-unit results agree."""
    layer = vgg16_random.layer("conv3_1")
    units = list(range(24))
    settings = OptimSettings(steps=12, image_size=32, batch_size=24)
    fp32 = optimize_units(
        vgg16_random, layer, units, "am", replace(settings, precision="fp32"), progress=False
    )
    bf16 = optimize_units(
        vgg16_random, layer, units, "am", replace(settings, precision="bf16"), progress=False
    )
    assert stats.spearmanr(fp32.rs, bf16.rs).statistic >= 0.95
    assert abs(fp32.rs.mean() - bf16.rs.mean()) <= 0.01
    assert (bf16.status != "ok").sum() <= (fp32.status != "ok").sum()
    np.testing.assert_allclose(bf16.objective_final.mean(), fp32.objective_final.mean(), rtol=0.05)


def test_progress_shows_whole_units(shallow_random, capsys):
    with UnitProgress(total_units=10, steps=3) as bar:
        bar.describe("am conv1")
        for _ in range(3):
            bar.step(4)
        bar.units_done(4)
    shown = capsys.readouterr().err
    assert "4/10 units" in shown and "4.0" not in shown


def test_bf16_iam_steps_agree_with_fp32(vgg16_random):
    """As test_bf16_steps_agree_with_fp32, for IAM (every unit of the layer in the objective: no shortcut)."""
    layer = vgg16_random.layer("conv3_1")
    settings = OptimSettings(steps=12, image_size=32, batch_size=24)
    fp32, bf16 = (
        optimize_units(
            vgg16_random, layer, list(range(24)), "iam", replace(settings, precision=p), progress=False
        )
        for p in ("fp32", "bf16")
    )
    assert stats.spearmanr(fp32.rs, bf16.rs).statistic >= 0.95
    assert abs(fp32.rs.mean() - bf16.rs.mean()) <= 0.01
    assert (bf16.status != "ok").sum() <= (fp32.status != "ok").sum()
    # IAM objectives straddle zero: compare their ranks, and their medians on the scale of their spread.
    assert stats.spearmanr(fp32.objective_final, bf16.objective_final).statistic >= 0.95
    assert (
        abs(np.median(bf16.objective_final) - np.median(fp32.objective_final))
        <= 0.05 * fp32.objective_final.std()
    )


def test_the_hybrids_silent_phase_climbs_the_highest_position():
    """While the unit's post-ReLU value is 0, hybrid climbs its pre-activation's max over positions (where
    the unit first responds), whatever the units' reduction; `pre` climbs it reduced as the units are."""
    from repsub.optimize.objectives import pre_reduction

    assert [pre_reduction("hybrid", r) for r in ("mean", "max", "center")] == ["max", "max", "center"]
    assert [pre_reduction("pre", r) for r in ("mean", "max", "center")] == ["mean", "max", "center"]
    assert pre_reduction("post", "mean") == "mean"


@pytest.mark.parametrize("own_term", ["hybrid", "pre"])
def test_a_max_reduced_run_optimizes_through_inplace_relus(shallow_random, own_term):
    """`selectivity --reduce max`, then IAM: the pre-activation's spatial max is taken before the model's
    inplace ReLU overwrites its input (this crashed in autograd before)."""
    settings = OptimSettings(steps=4, image_size=16, batch_size=6, own_term=own_term)
    result = optimize_units(
        shallow_random,
        shallow_random.layer("conv3"),
        list(range(6)),
        "iam",
        settings,
        progress=False,
        reduce="max",
    )
    assert len(result.status) == 6 and np.isfinite(result.objective_final).all()
