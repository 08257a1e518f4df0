"""Measuring the directions of a basis (issue 18, steps 3-4): selectivity, AM/IAM and RS, importance.

The goals: the unit basis reproduces today's rows bit for bit; a hand-made orthonormal basis that permutes and
flips the channels (oriented so its largest responses are positive) gives each direction the numbers of the
corresponding unit; ablating a direction equals a hand-written forward with the direction projected out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repsub
from repsub.ablation.measure import measure_importance, unit_means
from repsub.capture.reader import LayerCapture, channels_last
from repsub.core.readout import LinearReadout, UnitReadout
from repsub.errors import UsageError
from repsub.models import from_module
from repsub.optimize import OptimSettings, optimize_units
from repsub.optimize.objectives import climbed
from repsub.optimize.render import unit_seed
from tests.cli_helpers import run_cli

SETTINGS = OptimSettings(steps=6, image_size=16, batch_size=8)


def _data_batches(model, folder, size=16):
    from repsub.data.sources import open_source

    source = open_source(folder, size, model.mean, model.std, model.resize_ratio)
    return list(source.batches(8, workers=0))


def _layer_values(model, layer, batches) -> torch.Tensor:
    with torch.no_grad():
        maps = [
            LayerCapture(model.module, [layer], reduce=None)(x).activations[layer.name] for x, _ in batches
        ]
    return torch.cat([channels_last(m, layer.kind).reshape(-1, layer.n_units) for m in maps])


def _same(a: pa.Table, b: pa.Table) -> bool:
    """Equal tables, bit for bit, NaN equal to NaN."""

    def plain(value):
        if isinstance(value, float) and value != value:
            return "nan"
        if isinstance(value, dict):
            return {key: plain(v) for key, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, list) else value

    return a.schema == b.schema and plain(a.to_pylist()) == plain(b.to_pylist())


def test_the_unit_basis_reproduces_todays_rows_bit_for_bit(shallow_random, image_folder_dir):
    common = {"model": shallow_random, "progress": False, "device": "cpu"}
    for basis in ("unit", UnitReadout(128, "conv3")):
        for method in ("am", "iam"):
            args = {
                **common,
                "method": method,
                "layers": ["conv3", "fc5"],
                "units": "0-5",
                "settings": SETTINGS,
            }
            assert _same(repsub.visualize(**args), repsub.visualize(**args, basis=basis))
        args = {
            **common,
            "data": image_folder_dir,
            "image_size": 16,
            "workers": 0,
            "layers": ["conv3", "fc5"],
        }
        assert _same(repsub.selectivity(**args), repsub.selectivity(**args, basis=basis))
        args = {**args, "units": "0-3", "ablation": "mean"}
        assert _same(repsub.importance(**args), repsub.importance(**args, basis=basis))


@pytest.fixture(scope="module")
def permuted(shallow_random, image_folder_dir):
    """conv2's channels permuted and half of them flipped, oriented on the data (which undoes the flips)."""
    layer = shallow_random.layer("conv2")
    generator = torch.Generator().manual_seed(3)
    order = torch.randperm(64, generator=generator)
    signs = torch.where(torch.rand(64, generator=generator) < 0.5, -1.0, 1.0)
    flipped = torch.zeros(64, 64)
    flipped[torch.arange(64), order] = signs
    batches = _data_batches(shallow_random, image_folder_dir)
    readout = LinearReadout(flipped, name="perm", layer="conv2").oriented(_layer_values(shallow_random, layer,
                                                                                        batches))  # fmt: skip
    return readout, order, signs, batches


def test_orienting_a_flipped_direction_gives_back_the_unit(permuted):
    readout, order, signs, _ = permuted
    assert (signs < 0).sum() > 20
    expected = torch.zeros(64, 64)
    expected[torch.arange(64), order] = 1.0
    assert torch.equal(readout.directions, expected)


def test_a_permuted_basis_has_the_selectivity_of_its_units(shallow_random, image_folder_dir, permuted):
    readout, order, _, _ = permuted
    args = {"model": shallow_random, "data": image_folder_dir, "image_size": 16, "workers": 0, "progress": False,
            "layers": ["conv2"]}  # fmt: skip
    units = repsub.selectivity(**args).to_pylist()
    directions = repsub.selectivity(**args, basis=readout).to_pylist()
    assert {row["basis"] for row in directions} == {"perm"} and len(directions) == 64
    for row in directions:
        unit = units[int(order[row["unit"]])]
        np.testing.assert_allclose(row["class_means"], unit["class_means"], rtol=1e-6, atol=1e-9)
        assert row["selectivity"] == pytest.approx(unit["selectivity"], rel=1e-6, abs=1e-9)
        assert (row["top_class"], row["dead"]) == (unit["top_class"], unit["dead"])


@pytest.mark.parametrize("method", ["am", "iam"])
def test_a_permuted_basis_has_the_images_and_rs_of_its_units(shallow_random, permuted, method):
    readout, order, _, _ = permuted
    directions = [0, 5, 17, 40, 63]
    units = [int(order[k]) for k in directions]
    seeds = [unit_seed(0, "conv2", u) for u in units]  # the units' own starts and transforms
    layer = shallow_random.layer("conv2")
    of_units = optimize_units(shallow_random, layer, units, method, SETTINGS, progress=False)
    of_directions = optimize_units(shallow_random, layer, directions, method, SETTINGS, progress=False,
                                   readout=readout, seeds=seeds)  # fmt: skip
    # Up to float rounding (the units' AM computes each image's own filter only): one 8-bit level, rarely.
    difference = np.abs(of_units.images.astype(int) - of_directions.images.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    np.testing.assert_allclose(of_directions.layer_activations, of_units.layer_activations[:, order.numpy()],
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(of_directions.rs, of_units.rs, atol=2 / 64)
    assert of_directions.status.tolist() == of_units.status.tolist()


def test_a_permuted_basis_has_the_importance_of_its_units(shallow_random, permuted):
    readout, order, _, batches = permuted
    layer = shallow_random.layer("conv2")
    directions = [1, 9, 30, 62]
    units = [int(order[k]) for k in directions]
    for ablation in ("zero", "mean"):
        means = unit_means(shallow_random, layer, batches, "cpu") if ablation == "mean" else None
        direction_means = (
            unit_means(shallow_random, layer, batches, "cpu", readout) if means is not None else None
        )
        if means is not None:
            torch.testing.assert_close(direction_means, means[order])
        of_units = measure_importance(
            shallow_random, layer, units, batches, 3, ablation, means, progress=False
        )
        of_directions = measure_importance(shallow_random, layer, directions, batches, 3, ablation,
                                           direction_means, progress=False, readout=readout)  # fmt: skip
        got, expected = of_directions.results(), of_units.results()
        np.testing.assert_array_equal(got["accuracy_drop"], expected["accuracy_drop"])
        np.testing.assert_allclose(got["loss_increase"], expected["loss_increase"], rtol=1e-4, atol=1e-6)


def _small_model():
    torch.manual_seed(1)
    module = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3),
    )  # fmt: skip
    return module, from_module(module, ["3"], 12, (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("orthonormal", [True, False])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_ablating_a_direction_equals_projecting_it_out_by_hand(orthonormal, ablation):
    module, model = _small_model()
    layer = model.layers[0]
    generator = torch.Generator().manual_seed(2)
    if orthonormal:
        directions = (
            torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))[0].T[:4].float()
        )
    else:
        directions = torch.randn(5, 8, generator=generator)
    readout = LinearReadout(directions, name="mine")
    images = torch.randn(24, 3, 12, 12, generator=generator)
    labels = torch.arange(24) % 3
    batches = [(images[:10], labels[:10]), (images[10:], labels[10:])]
    with torch.no_grad():
        hidden = F.relu(module[2](F.relu(module[0](images))))  # [B, 8, H, W], no hook
        responses = torch.einsum("kc,bchw->bkhw", directions, hidden)
        # The change of x for a change dz of direction k: dz times column k of the decoder (D^T for orthonormal
        # rows, the pseudo-inverse otherwise).
        decoder = directions.T if orthonormal else torch.linalg.pinv(directions)
        intact = module[6](module[5](module[4](hidden)))
        means = responses.mean(dim=(0, 2, 3))
        if ablation == "mean":
            torch.testing.assert_close(unit_means(model, layer, batches, "cpu", readout), means)
        counts = measure_importance(
            model,
            layer,
            list(range(len(directions))),
            batches,
            3,
            ablation,
            means if ablation == "mean" else None,
            progress=False,
            readout=readout,
        )
        results = counts.results()
        for k in range(len(directions)):
            value = means[k] if ablation == "mean" else 0.0
            change = (value - responses[:, k])[:, None] * decoder[:, k].view(1, -1, 1, 1)
            logits = module[6](module[5](module[4](hidden + change)))
            assert torch.einsum("c,bchw->bhw", directions[k], hidden + change) == pytest.approx(
                torch.full((24, 12, 12), float(value)), abs=1e-4
            )  # the direction reads v everywhere
            drop = ((intact.argmax(1) == labels).sum() - (logits.argmax(1) == labels).sum()).item() / 24
            loss = (F.cross_entropy(logits, labels) - F.cross_entropy(intact, labels)).item()
            assert results["accuracy_drop"][k] == pytest.approx(drop, abs=1e-12)
            assert results["loss_increase"][k] == pytest.approx(loss, rel=1e-4, abs=1e-6)


def test_a_signed_directions_start_image_has_a_gradient(shallow_random, image_folder_dir):
    """The hybrid own term climbs a signed direction's response (never flat): every start image moves."""
    layer = shallow_random.layer("conv3")
    values = _layer_values(shallow_random, layer, _data_batches(shallow_random, image_folder_dir))
    centred = values - values.mean(0)
    principal = torch.linalg.svd(centred.double(), full_matrices=False)[2][:16].float()
    readout = LinearReadout(principal, name="pca", layer="conv3").oriented(values)
    images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0), requires_grad=True)
    got = LayerCapture(
        shallow_random.module, [layer], pre=True, pre_reduce="max", readouts={"conv3": readout}
    )(images)
    index = torch.arange(16)
    own = got.activations["conv3"][index, index]
    assert (own < 0).any()  # signed: some directions start negative, and are climbed as they are
    objective = climbed("am", got.activations["conv3"], got.pre["conv3"], index, "hybrid")
    torch.testing.assert_close(objective, own)
    (grad,) = torch.autograd.grad(objective.sum(), images)
    assert (grad.flatten(1).abs().sum(1) > 0).all()


def test_a_basis_name_the_run_lacks_is_refused_listing_its_bases(tmp_path, capsys, shallow_random):
    with pytest.raises(UsageError, match=r"no basis 'pca' in .*; this run has: unit"):
        repsub.visualize(model=shallow_random, method="am", basis="pca", settings=SETTINGS, progress=False)
    code, said = run_cli(capsys, "visualize", "--model", "shallow_cnn", "--method", "am", "--basis", "pca",
                         "--out", tmp_path / "run", "--steps", "2", "--units", "0", "--layers", "fc5")  # fmt: skip
    assert code == 2 and "no basis 'pca' in" in said and "this run has: unit" in said
    code, said = run_cli(capsys, "visualize", "--model", "shallow_cnn", "--method", "am", "--basis", "unit",
                         "--out", tmp_path / "run", "--steps", "2", "--units", "0", "--layers", "fc5",
                         "--image-size", "16", "--no-progress")  # fmt: skip
    assert code == 0, said
    assert repsub.open_run(tmp_path / "run").frame(methods=["am"]).column("basis").to_pylist() == ["unit"]


def test_a_basis_writes_rows_of_its_own_into_a_run(tmp_path, shallow_random, image_folder_dir):
    readout = LinearReadout(torch.eye(128)[:4] * -1 + torch.eye(128)[4:8], name="mine", layer="conv3")
    args = {"model": shallow_random, "out": tmp_path / "run", "progress": False}
    repsub.visualize(**args, method="iam", layers=["conv3"], units="0-3", settings=SETTINGS)
    repsub.visualize(**args, method="iam", basis=readout, units="0-1", settings=SETTINGS)
    run = repsub.open_run(tmp_path / "run")
    assert run.frame(methods=["iam"]).num_rows == 4
    mine = run.frame(methods=["iam"], basis="mine")
    assert mine.column("unit").to_pylist() == [0, 1] and set(mine.column("basis").to_pylist()) == {"mine"}
    config = run.manifest["commands"]["visualize/iam"]["config"]
    assert config["basis"] == {
        "name": "mine",
        "kind": "vectors",
        "K": 4,
        "content_hash": readout.content_hash(),
    }
    other_fit = LinearReadout(torch.eye(128)[:4], name="mine", layer="conv3")
    with pytest.raises(repsub.errors.RunError, match="basis.*content_hash"):
        repsub.visualize(**args, method="iam", basis=other_fit, units="0", settings=SETTINGS)
