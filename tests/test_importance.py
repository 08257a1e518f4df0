"""Importance by ablation: the batched, cut computation against one plain full forward per ablated unit."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repsub.ablation.counts import AblationCounts
from repsub.ablation.edit import ablated_copies
from repsub.ablation.measure import ablated_forward, measure_importance, unit_means
from repsub.ablation.split import SplitModel
from repsub.capture.reader import LayerCapture
from repsub.models import LoadedModel, UnitLayer, from_module, load_model


def _batches(n_images, size, num_classes, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 3, size, size, generator=g)
    labels = torch.arange(n_images) % num_classes
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, n_images, batch)]


def _brute_force(model: LoadedModel, layer: UnitLayer, unit: int, value: float, batches, num_classes):
    """A full forward per batch with the unit's whole output set to `value` (by indexing, in a hook at the
    layer's read point); unit -1: the intact model."""

    def zero_unit(output):
        edited = output.clone()
        edited[:, unit] = value
        return edited

    capture = LayerCapture(
        model.module, [layer], output=True, edits={layer.name: zero_unit} if unit >= 0 else None
    )
    correct, loss = np.zeros(num_classes, dtype=np.int64), 0.0
    with torch.no_grad(), capture:
        for images, labels in batches:
            logits = capture(images).output
            np.add.at(correct, labels.numpy(), (logits.argmax(1) == labels).numpy().astype(np.int64))
            loss += F.cross_entropy(logits, labels, reduction="sum").item()
    return correct, loss


@pytest.mark.parametrize("layer_name", ["conv2", "conv4", "fc5"])
def test_counts_equal_a_full_forward_per_ablated_unit(shallow_random, layer_name):
    layer = shallow_random.layer(layer_name)
    batches = _batches(20, 16, 3, batch=7)
    units = [0, 3, 5, 9, 17]
    counts = measure_importance(shallow_random, layer, units, batches, 3, progress=False)
    base_correct, base_loss = _brute_force(shallow_random, layer, -1, 0.0, batches, 3)
    results = counts.results()
    assert results["baseline_accuracy"][0] == base_correct.sum() / 20
    for k, unit in enumerate(units):
        correct, loss = _brute_force(shallow_random, layer, unit, 0.0, batches, 3)
        assert counts.correct[k].tolist() == correct.tolist()
        assert results["accuracy_drop"][k] == pytest.approx((base_correct.sum() - correct.sum()) / 20)
        assert results["loss_increase"][k] == pytest.approx((loss - base_loss) / 20, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(
            results["class_accuracy_drop"][k], (base_correct - correct) / np.array([7, 7, 6])
        )


@pytest.mark.parametrize("size", [32, 20])  # 20 px: the MLP resizes its input (a step fx cannot trace into)
def test_the_papers_mlp_is_cut_not_run_whole_per_unit(capsys, size):
    mlp = load_model("mlp", weights="random", seed=0, num_classes=3)
    layer = mlp.layer("fc3")
    batches = _batches(10, size, 3, batch=4)
    counts = measure_importance(mlp, layer, [0, 7, 300], batches, 3, progress=False)
    assert "cannot be cut" not in capsys.readouterr().err
    for k, unit in enumerate([0, 7, 300]):
        correct, _ = _brute_force(mlp, layer, unit, 0.0, batches, 3)
        assert counts.correct[k].tolist() == correct.tolist()


def test_vgg16_cut_equals_full_forwards_at_small_size(vgg16_random):
    """Random VGG16 logits barely change when one unit goes: compare the logits themselves."""
    for name in ("conv3_1", "fc7"):
        layer = vgg16_random.layer(name)
        split = SplitModel(vgg16_random.module, layer.module)
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            head = split.prefix(images)
            stacked = split.suffix(*[ablated_copies(head[0], [4, 9], torch.zeros(2), layer.kind)])
            for k, unit in enumerate((4, 9)):
                full = ablated_forward(vgg16_random, layer, unit, 0.0, images)
                torch.testing.assert_close(stacked[2 * k : 2 * k + 2], full, rtol=1e-4, atol=1e-5)


def test_mean_ablation_sets_the_unit_to_its_data_mean(shallow_random):
    layer = shallow_random.layer("conv3")
    batches = _batches(12, 16, 3, batch=6)
    means = unit_means(shallow_random, layer, batches, "cpu")
    counts = measure_importance(
        shallow_random, layer, [2, 7], batches, 3, ablation="mean", means=means, progress=False
    )
    for k, unit in enumerate((2, 7)):
        correct, _ = _brute_force(shallow_random, layer, unit, means[unit].item(), batches, 3)
        assert counts.correct[k].tolist() == correct.tolist()


def test_counts_of_image_shards_merge_exactly(shallow_random):
    layer = shallow_random.layer("conv4")
    batches = _batches(21, 16, 3, batch=5)
    whole = measure_importance(shallow_random, layer, [1, 2, 3], batches, 3, progress=False)
    first = measure_importance(shallow_random, layer, [1, 2, 3], batches[:2], 3, progress=False)
    rest = measure_importance(shallow_random, layer, [1, 2, 3], batches[2:], 3, progress=False)
    merged = AblationCounts.from_state_dict(first.state_dict()).merge(rest)
    for name in ("class_counts", "baseline_correct", "correct"):
        assert torch.equal(getattr(merged, name), getattr(whole, name))
    torch.testing.assert_close(merged.loss, whole.loss, rtol=1e-12, atol=1e-9)


class _Untraceable(nn.Module):
    """Control flow on a shape: torch.fx cannot trace it (a proxy has no truth value)."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu(self.conv(x))
        if x.shape[-1] > 1:
            x = x.mean(dim=(2, 3))
        return self.fc(x)


def test_an_untraceable_model_falls_back_to_full_forwards(capsys):
    torch.manual_seed(0)
    model = from_module(_Untraceable(), layers=["relu"], image_size=8)
    layer = model.layers[0]
    batches = _batches(9, 8, 3, batch=4)
    counts = measure_importance(model, layer, [0, 1, 2, 3], batches, 3, progress=False)
    assert "cannot be cut" in capsys.readouterr().err
    for k in range(4):
        correct, _ = _brute_force(model, layer, k, 0.0, batches, 3)
        assert counts.correct[k].tolist() == correct.tolist()


def test_balanced_subset_is_seeded_and_balanced():
    from repsub.data.subset import balanced_subset

    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    picked = balanced_subset(labels, 9, seed=4)
    assert np.bincount(labels[picked]).tolist() == [4, 3, 2] or np.bincount(labels[picked]).tolist() == [
        3,
        4,
        2,
    ]
    assert picked.tolist() == sorted(set(picked.tolist()))
    assert balanced_subset(labels, 9, seed=4).tolist() == picked.tolist()
    assert balanced_subset(labels, 9, seed=5).tolist() != picked.tolist()
    # class 2 has 2 of its share of 3: the other classes make up the difference
    uneven = balanced_subset(labels, 7, seed=0)
    assert sorted(np.bincount(labels[uneven]).tolist()) == [2, 2, 3]
    assert len(balanced_subset(labels, 100, seed=0)) == 22


def test_resnet_blocks_and_a_relu_called_twice_cut_at_the_read_point():
    """resnet18: a block output, and its ReLU module (called twice: read at its last call, the block output)."""

    model = load_model("resnet18", "random", seed=0, num_classes=5)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for layer in model.select(["layer2.0", "layer2.0.relu", "layer3.1"]):
        split = SplitModel(model.module, layer.module)
        with torch.no_grad():
            head = split.prefix(images)
            inputs = [
                ablated_copies(t, [3], torch.zeros(1), layer.kind) if i == split.crossing_index else t
                for i, t in enumerate(head)
            ]
            cut = split.suffix(*inputs)
            full = ablated_forward(model, layer, 3, 0.0, images)
        torch.testing.assert_close(cut, full, rtol=1e-4, atol=1e-5)
    assert model.select(["layer2.0.relu"])[0].calls == 2


# ------------------------------------------------------------------ the command, end to end


def _folder_batches(image_folder_dir, model, size):
    """Every image of the fixture ImageFolder as the command reads it (evaluation transform), in order."""
    from repsub.data.sources import open_source

    source = open_source(image_folder_dir, size, model.mean, model.std, model.resize_ratio)
    return list(source.batches(7, workers=0))


def test_command_rows_equal_full_forwards_with_the_unit_zeroed(
    tmp_path, image_folder_dir, shallow_random, capsys
):
    import repsub
    from repsub.cli import main

    weights = tmp_path / "w.pt"
    torch.save(shallow_random.module.state_dict(), weights)  # 3 classes, as the data
    run = tmp_path / "run"
    common = ["--model", "shallow_cnn", "--weights", str(weights), "--out", str(run), "--no-progress"]
    args = ["importance", *common, "--data", str(image_folder_dir), "--layers", "conv3,fc5", "--units", "0-4"]
    assert main([*args, "--image-size", "16", "--workers", "0"]) == 0
    assert "baseline accuracy" in capsys.readouterr().err
    table = repsub.open_run(run).importance.to_table().to_pylist()
    assert sorted((r["layer"], r["unit"]) for r in table) == [
        (n, u) for n in ("conv3", "fc5") for u in range(5)
    ]
    batches = _folder_batches(image_folder_dir, shallow_random, 16)
    base_correct, base_loss = _brute_force(shallow_random, shallow_random.layer("conv3"), -1, 0.0, batches, 3)
    for row in table:
        correct, loss = _brute_force(
            shallow_random, shallow_random.layer(row["layer"]), row["unit"], 0.0, batches, 3
        )
        assert row["n_images"] == 21 and row["ablation"] == "zero" and row["command"] == "importance/zero"
        assert row["baseline_accuracy"] == pytest.approx(base_correct.sum() / 21)
        assert row["accuracy_drop"] == pytest.approx((base_correct.sum() - correct.sum()) / 21)
        assert row["loss_increase"] == pytest.approx((loss - base_loss) / 21, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(row["class_accuracy_drop"], (base_correct - correct) / 7)
    manifest = repsub.open_run(run).manifest
    assert manifest["commands"]["importance/zero"]["config"]["images_used"] == 21
    # A rerun on a subset replaces its units' rows; the others stay (another image count: mixing, allowed).
    assert main([*args[:-4], "--layers", "fc5", "--units", "3-4", "--images", "9", "--image-size", "16",
                 "--allow-mixed"]) == 0  # fmt: skip
    rows = {
        (r["layer"], r["unit"]): r["n_images"] for r in repsub.open_run(run).importance.to_table().to_pylist()
    }
    assert len(rows) == 10 and rows[("fc5", 3)] == 9 and rows[("fc5", 2)] == 21


def test_vgg16_importance_equals_full_forwards_at_small_size(image_folder_dir):
    import repsub
    from repsub.models import load_model

    vgg = load_model("vgg16", "random", seed=1, num_classes=3)
    table = repsub.importance(
        model=vgg, data=image_folder_dir, layers=["conv4_2", "fc7"], units="0-2", image_size=32, workers=0,
        progress=False, batch_size=8,
    )  # fmt: skip
    batches = _folder_batches(image_folder_dir, vgg, 32)
    base_correct, base_loss = _brute_force(vgg, vgg.layer("fc7"), -1, 0.0, batches, 3)
    for row in table.to_pylist():
        correct, loss = _brute_force(vgg, vgg.layer(row["layer"]), row["unit"], 0.0, batches, 3)
        assert row["accuracy_drop"] == pytest.approx((base_correct.sum() - correct.sum()) / 21)
        assert row["loss_increase"] == pytest.approx((loss - base_loss) / 21, rel=1e-4, abs=1e-6)


def test_data_of_other_classes_is_refused(image_folder_dir, tmp_path):
    import repsub
    from repsub.errors import DataError
    from repsub.models import load_model

    with pytest.raises(DataError, match="3 classes, the model's classifier 10"):
        repsub.importance(model=load_model("shallow_cnn", "random"), data=image_folder_dir, progress=False)


def test_importance_extends_a_run_with_its_own_model(tmp_path, image_folder_dir, shallow_random):
    """A run made by selectivity: importance takes its model (weights verified), layers and image size."""
    import repsub
    from repsub.cli import main

    weights = tmp_path / "w.pt"
    torch.save(shallow_random.module.state_dict(), weights)
    run = tmp_path / "run"
    repsub.selectivity(
        model="shallow_cnn", weights=str(weights), data=image_folder_dir, out=run, layers=["conv4", "fc5"],
        image_size=16, workers=0, progress=False,
    )  # fmt: skip
    argv = [
        "importance",
        "--out",
        str(run),
        "--data",
        str(image_folder_dir),
        "--units",
        "0-1",
        "--workers",
        "0",
    ]
    assert main([*argv, "--no-progress"]) == 0
    rows = repsub.open_run(run).importance.to_table().to_pylist()
    assert sorted((r["layer"], r["unit"]) for r in rows) == [
        ("conv4", 0),
        ("conv4", 1),
        ("fc5", 0),
        ("fc5", 1),
    ]
    config = repsub.open_run(run).manifest["commands"]["importance/zero"]["config"]
    assert config["image_size"] == 16
