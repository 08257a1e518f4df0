"""The interpretability index's similarities (features, lpips) and its central variant, from the core functions
to `repsub interpretability` on a small run; each compared with an independent computation."""

import io
import math
import zlib

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

import repsub
from repsub.capture.perceptual import LpipsEmbedder, backbone_cache_path
from repsub.cli import main
from repsub.core.interpretability import (
    central_index,
    features_similarity,
    labels_similarity,
    lpips_similarity,
    pixels_similarity,
    two_afc_index,
    unit_rng,
)
from repsub.errors import RunError, UsageError
from repsub.models import load_model


def test_features_and_lpips_similarities_by_hand():
    q = np.array([[[3.0, 4.0], [0.0, 0.0]]])  # [T=1, Q=2, D=2]; a zero vector has cosine 0 with anything
    r = np.array([[[6.0, 8.0], [-4.0, 3.0], [1.0, 0.0]]])
    np.testing.assert_allclose(features_similarity(q, r), [[[1.0, 0.0, 0.6], [0.0, 0.0, 0.0]]], atol=1e-15)
    np.testing.assert_allclose(lpips_similarity(q, r), [[[-25.0, -50.0, -20.0], [-100.0, -25.0, -1.0]]])


def test_central_variant_takes_the_high_band_as_the_top_side():
    # The hand-computed pixels trial of test_interpretability, the 50-75% band in the top exemplars' place.
    high, low = np.zeros((2, 2)), np.tile([3.0, 4.0], (2, 1))
    for temperature in (1.0, 2.0):
        index = central_index(low, high, pixels_similarity, unit_rng(0, "x", 0, "central"), trials=3,
                              references=1, temperature=temperature)  # fmt: skip
        assert index == pytest.approx(1 / (1 + math.exp(-4 / temperature)), rel=1e-12)
    # A unit whose 50-75% band is all one class and its 25-50% band the others: 1.0 under labels
    assert (
        central_index(np.array([0, 1] * 8), np.full(16, 2), labels_similarity, unit_rng(0, "l", 1, "central"))
        == 1.0
    )
    with pytest.raises(ValueError, match="need 10 images of its 25-50% band, the unit has 3"):
        central_index(np.zeros(3), np.zeros(12), labels_similarity, unit_rng(0, "l", 1, "central"))
    # The variants draw from streams of their own; the extremal one is the stream of runs made before variants
    assert unit_rng(0, "l", 1).random() == np.random.default_rng([0, zlib.crc32(b"l"), 1]).random()
    assert unit_rng(0, "l", 1, "central").random() != unit_rng(0, "l", 1).random()


def backbone_features(embedder, images):
    """The LPIPS backbone's layer outputs of [B, H, W, 3] images in [0, 1], through the package's own modules."""
    with torch.no_grad():
        return [out.numpy().astype(np.float64) for out in embedder.metric.net(embedder.metric.scaling_layer(
            embedder._input(images)))]  # fmt: skip


def test_lpips_embeddings_give_the_lpips_distance(tmp_path):
    rng = np.random.default_rng(0)
    first, second = rng.random((3, 20, 20, 3)), rng.random((3, 20, 20, 3))
    embedder = LpipsEmbedder("alex", "random:3")
    a, b = embedder.embed(first).astype(np.float64), embedder.embed(second).astype(np.float64)
    distance = np.square(a - b).sum(1)
    # The package's own forward on the pairs, and by hand: unit-normalized channels, squared difference
    # weighted per channel, mean over positions, summed over layers.
    np.testing.assert_allclose(distance, embedder.distance(first, second), rtol=1e-4)
    by_hand = np.zeros(3)
    for x, y, lin in zip(backbone_features(embedder, first), backbone_features(embedder, second),
                         embedder.metric.lins, strict=True):  # fmt: skip
        x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + 1e-10)
        y = y / (np.sqrt((y**2).sum(1, keepdims=True)) + 1e-10)
        weight = lin.model[-1].weight.detach().numpy().reshape(1, -1, 1, 1).astype(np.float64)
        by_hand += (weight * (x - y) ** 2).sum(1).mean((1, 2))
    np.testing.assert_allclose(distance, by_hand, rtol=1e-4)
    # random:SEED is seeded, and a state file of the backbone is read as the same weights
    np.testing.assert_array_equal(LpipsEmbedder("alex", "random:3").embed(first), a.astype(np.float32))
    assert not np.array_equal(LpipsEmbedder("alex", "random:4").embed(first), a.astype(np.float32))
    import torchvision.models as tv

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        torch.save(tv.alexnet(weights=None).state_dict(), tmp_path / "alex.pth")
    np.testing.assert_array_equal(
        LpipsEmbedder("alex", str(tmp_path / "alex.pth")).embed(first), a.astype(np.float32)
    )


def test_lpips_without_backbone_weights_names_the_cache_path(tmp_path, monkeypatch):
    # TORCH_HOME, not torch.hub.set_dir: set_dir would pin the hub directory for the rest of the session.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = backbone_cache_path("alex")
    assert path == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(UsageError, match=f"weights at {path}, which is absent.*place the file alexnet-owt"):
        LpipsEmbedder("alex", "imagenet")
    with pytest.raises(UsageError, match="'squeeze'; valid backbones: alex, vgg"):
        LpipsEmbedder("squeeze", "random:0")
    with pytest.raises(UsageError, match="no such file"):
        LpipsEmbedder("alex", str(tmp_path / "absent.pth"))


# ---------------------------------------------------------------- the command on a small run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A shallow_cnn run on 48 images of 3 classes with 24 exemplars per side (every image has a thumbnail) and
    the per-image activations of fc5 (from which the test's bands table is made)."""
    from repsub.data.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("interp")
    data = make_image_folder(root / "images", num_classes=3, images_per_class=16, size=20)
    out = root / "run"
    repsub.selectivity(model="shallow_cnn", weights="random", seed=0, data=data, out=out, image_size=16,
                       layers=["fc5"], batch_size=16, workers=0, progress=False, exemplars=24,
                       save_activations=["fc5"], bands=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def banded_run(tmp_path_factory):
    """The same run with the band pass (the central variant's images): a sample of up to 16 images per band."""
    from repsub.data.synthetic import make_image_folder

    root = tmp_path_factory.mktemp("interp-bands")
    data = make_image_folder(root / "images", num_classes=3, images_per_class=16, size=20)
    out = root / "run"
    repsub.selectivity(model="shallow_cnn", weights="random", seed=0, data=data, out=out, image_size=16,
                       layers=["fc5"], batch_size=16, workers=0, progress=False, exemplars=24,
                       save_activations=["fc5"], quantile_k=64)  # fmt: skip
    return out


def stored(out, similarity, variant="extremal"):
    table = repsub.open_run(out).interpretability.to_table(
        filter=(pc.field("similarity") == similarity) & (pc.field("variant") == variant)
    )
    return table.sort_by("unit")


def thumbnails(run):
    table = run.images.to_table()
    return {i: np.asarray(Image.open(io.BytesIO(d)).convert("RGB"), np.float32) / 255
            for i, d in zip(table.column("image_index").to_pylist(), table.column("image").to_pylist(), strict=True)}  # fmt: skip


def test_features_of_the_runs_model_against_a_hand_forward(small_run, monkeypatch):
    import repsub.commands.interpretability as command

    monkeypatch.setattr(command, "CHUNK", 7)  # the images' features in 7 chunks, each in batches
    table = repsub.interpretability(small_run, similarity="features", feature_layer="conv2", progress=False)
    run = repsub.open_run(small_run)
    # The run's model by hand: a forward hook on conv2's module, the map mean-pooled, numpy cosines
    model = load_model("shallow_cnn", weights="random", seed=0)  # the run's: 10 classes
    images = thumbnails(run)
    order = sorted(images)
    x = torch.from_numpy(np.stack([images[i] for i in order])).permute(0, 3, 1, 2)  # 16 px: the run's size
    x = (x - torch.tensor(model.mean).view(1, 3, 1, 1)) / torch.tensor(model.std).view(1, 3, 1, 1)
    seen = {}

    def keep(_module, _inputs, out):  # returns None: the forward goes on unchanged
        seen["out"] = out.mean((2, 3)).clone()

    handle = dict(model.module.named_modules())["features.3"].register_forward_hook(keep)
    with torch.no_grad():
        model.module(x)
    handle.remove()
    vectors = dict(zip(order, seen["out"].numpy().astype(np.float64), strict=True))

    def cosine(queries, references):  # items: image indices
        q = np.stack([[vectors[i] for i in row] for row in queries])
        r = np.stack([[vectors[i] for i in row] for row in references])
        q /= np.linalg.norm(q, axis=-1, keepdims=True)
        r /= np.linalg.norm(r, axis=-1, keepdims=True)
        return np.einsum("tqd,trd->tqr", q, r)

    index = stored(small_run, "features").column("index").to_numpy()
    assert len(index) == 128 and np.array_equal(index, table.column("index").to_numpy())
    for unit in (0, 77, 127):
        frame = run.exemplars("fc5", unit, images=False)
        top = frame[frame["side"] == "top"]["image_index"].to_numpy()
        bottom = frame[frame["side"] == "bottom"]["image_index"].to_numpy()
        expected = two_afc_index(top, bottom, cosine, unit_rng(0, "fc5", unit))
        assert index[unit] == pytest.approx(expected, abs=1e-6)
    config = run.manifest["commands"]["interpretability/features"]["config"]
    assert config["feature_layer"] == "conv2" and config["feature_model"] == "shallow_cnn"
    # Seeded: a second run writes the same values exactly
    again = repsub.interpretability(small_run, similarity="features", feature_layer="conv2", progress=False)
    assert again.column("index").to_pylist() == table.column("index").to_pylist()
    # Another model by name and weights: its own features (a state file of a 3-class shallow_cnn of seed 1)
    torch.save(load_model("shallow_cnn", weights="random", seed=1, num_classes=3).module.state_dict(),
               small_run.parent / "other.pth")  # fmt: skip
    other = repsub.interpretability(small_run, similarity="features", feature_layer="conv2", feature_model="shallow_cnn",
                                    feature_weights=str(small_run.parent / "other.pth"), progress=False)  # fmt: skip
    assert other.num_rows == 128 and not np.array_equal(other.column("index").to_numpy(), index)
    recorded = repsub.open_run(small_run).manifest["commands"]["interpretability/features"]["config"]
    assert recorded["feature_weights"] == str(small_run.parent / "other.pth")
    assert recorded["feature_weights_sha256"] != config["feature_weights_sha256"]


def test_bad_feature_and_similarity_options_are_refused(small_run, monkeypatch):
    with pytest.raises(UsageError, match="unknown layer.*conv9.*valid layers: conv1, conv2"):
        repsub.interpretability(small_run, similarity="features", feature_layer="conv9", progress=False)
    with pytest.raises(UsageError, match="needs --feature-layer LAYER; layers of shallow_cnn: conv1, conv2"):
        repsub.interpretability(small_run, similarity="features", progress=False)
    with pytest.raises(UsageError, match="'ssim'; valid similarities: labels, pixels, features, lpips"):
        repsub.interpretability(small_run, similarity="ssim")
    with pytest.raises(UsageError, match="'middle'; valid variants: extremal, central, both"):
        repsub.interpretability(small_run, variant="middle")
    monkeypatch.setenv("TORCH_HOME", str(small_run.parent / "empty"))
    with pytest.raises(UsageError, match=str(small_run.parent / "empty" / "hub" / "checkpoints" / "alexnet")):
        repsub.interpretability(small_run, similarity="lpips", progress=False)
    with pytest.raises(
        RunError, match="fc5 unit 0 has 24 exemplars on a side; 30 references and a query need 31"
    ):
        repsub.interpretability(small_run, references=30, progress=False)
    with pytest.raises(RunError, match="has no bands table.*run `repsub selectivity` with --bands first"):
        repsub.interpretability(small_run, variant="central", progress=False)


def test_lpips_index_against_the_packages_own_distances(small_run, capsys):
    # 4 trials: the package's forward runs on every (query, reference) pair the trials draw, 144 per unit
    command = ["interpretability", str(small_run), "--similarity", "lpips", "--lpips-weights", "random:0",
               "--trials", "4", "--no-progress"]  # fmt: skip
    assert main(command) == 0
    assert "lpips interpretability index of 128 units (extremal)" in capsys.readouterr().out
    run = repsub.open_run(small_run)
    index = stored(small_run, "lpips").column("index").to_numpy()
    embedder = LpipsEmbedder("alex", "random:0")
    images = thumbnails(run)

    def negative_lpips(queries, references):  # items: image indices; [T, Q] x [T, R] -> [T, Q, R]
        q, r = np.broadcast_arrays(queries[:, :, None], references[:, None, :])
        first = np.stack([images[i] for i in q.reshape(-1)])
        second = np.stack([images[i] for i in r.reshape(-1)])
        return -embedder.distance(first, second).astype(np.float64).reshape(q.shape)

    for unit in (5, 100):
        frame = run.exemplars("fc5", unit, images=False)
        top = frame[frame["side"] == "top"]["image_index"].to_numpy()
        bottom = frame[frame["side"] == "bottom"]["image_index"].to_numpy()
        expected = two_afc_index(top, bottom, negative_lpips, unit_rng(0, "fc5", unit), trials=4)
        assert index[unit] == pytest.approx(expected, abs=1e-3)  # float32 forwards, two orders of summation
    assert main(command) == 0
    assert np.array_equal(stored(small_run, "lpips").column("index").to_numpy(), index)  # seeded: exactly


def band_labels(out) -> dict:
    """{(unit, band name): the labels of the band's sampled images} of fc5, from the run's bands table and the
    labels of its stored per-image activations."""
    run = repsub.open_run(out)
    acts = run.activations.to_table(filter=pc.field("layer") == "fc5")
    label_of = dict(
        zip(acts.column("image_index").to_pylist(), acts.column("label").to_pylist(), strict=True)
    )
    bands = run.band_rows.to_table(filter=pc.field("layer") == "fc5").to_pylist()
    return {
        (row["unit"], row["name"]): np.array([label_of[i] for i in row["sample"]], np.int64) for row in bands
    }


def test_central_variant_from_the_bands_table(banded_run):
    small_run = banded_run
    sampled = band_labels(small_run)
    table = repsub.interpretability(small_run, similarity="labels", variant="both", progress=False)
    assert table.num_rows == 2 * 128 and sorted(set(table.column("variant").to_pylist())) == [
        "central",
        "extremal",
    ]
    central = stored(small_run, "labels", "central").column("index").to_numpy()
    extremal = stored(small_run, "labels", "extremal").column("index").to_numpy()
    run = repsub.open_run(small_run)
    for unit in range(128):
        low, high = sampled[(unit, "25-50%")], sampled[(unit, "50-75%")]
        if min(len(low), len(high)) < 10:  # too few images in a band (a unit constant over many images)
            assert math.isnan(central[unit])
            continue
        expected = central_index(low, high, labels_similarity, unit_rng(0, "fc5", unit, "central"))
        assert central[unit] == expected
    assert np.isfinite(central).sum() > 64  # most units have the bands' images
    frame = run.exemplars("fc5", 3, images=False)
    assert extremal[3] == two_afc_index(frame[frame["side"] == "top"]["label"].to_numpy(),
                                        frame[frame["side"] == "bottom"]["label"].to_numpy(), labels_similarity,
                                        unit_rng(0, "fc5", 3))  # fmt: skip
    # One variant again with the same settings: the other's rows are kept as they were
    repsub.interpretability(small_run, similarity="labels", variant="extremal", progress=False)
    np.testing.assert_array_equal(stored(small_run, "labels", "central").column("index").to_numpy(), central)
    np.testing.assert_array_equal(
        stored(small_run, "labels", "extremal").column("index").to_numpy(), extremal
    )
    # ... with other settings it would keep rows of another meaning: refused, nothing written
    with pytest.raises(RunError, match="holds the central labels index made with other settings.*trials 20.*"
                       "trials 5.*--variant both"):  # fmt: skip
        repsub.interpretability(small_run, similarity="labels", variant="extremal", trials=5, progress=False)
    np.testing.assert_array_equal(
        stored(small_run, "labels", "extremal").column("index").to_numpy(), extremal
    )
