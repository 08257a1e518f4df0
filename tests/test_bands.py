"""The range of activations (issue 19): per-unit KLL quantile sketches within their stated rank error against
numpy's exact quantiles (one pass and merged shards), and bands whose per-class counts and seeded samples
merged over data shards equal one unsharded pass exactly, and equal a brute-force count and sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repsub.core.bands import BAND_NAMES, EDGE_RANKS, BandAccumulator, class_composition, image_keys
from repsub.core.quantiles import QuantileSketches

N_IMAGES, UNITS, CLASSES = 6000, 12, 5


def generated(seed: int = 0):
    """Activations of different shapes per unit (gamma, post-ReLU with many zeros, normal) and labels."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([
        rng.gamma(0.5, 2.0, (N_IMAGES, 4)),
        np.maximum(rng.normal(-0.5, 1.0, (N_IMAGES, 4)), 0),
        rng.normal(3.0, 2.0, (N_IMAGES, 4)),
    ], axis=1).astype(np.float32)  # fmt: skip
    labels = rng.integers(0, CLASSES, N_IMAGES)
    return values, labels


def feed(acc, values, labels, start, stop, batch=256):
    for first in range(start, stop, batch):
        last = min(first + batch, stop)
        acc.add({"layer": torch.from_numpy(values[first:last])}, torch.from_numpy(labels[first:last]),
                np.arange(first, last))  # fmt: skip


def true_rank_interval(column: np.ndarray, value: float) -> tuple[float, float]:
    """The normalized ranks a value holds in the data: from the share strictly below it to the share <= it."""
    return float((column < value).mean()), float((column <= value).mean())


@pytest.mark.parametrize("k", [200, 1000])
def test_sketch_quantiles_within_the_stated_rank_error(k):
    values, labels = generated()
    one = QuantileSketches({"layer": UNITS}, k=k)
    feed(one, values, labels, 0, N_IMAGES)
    shards = [QuantileSketches({"layer": UNITS}, k=k) for _ in range(3)]
    for shard, (start, stop) in zip(shards, [(0, 1000), (1000, 4500), (4500, N_IMAGES)], strict=True):
        feed(shard, values, labels, start, stop)
    merged = shards[2].merge(shards[0]).merge(shards[1])
    assert merged.n_images == one.n_images == N_IMAGES
    ranks = [0.01, 0.25, 0.5, 0.9, 0.99]
    for sketches in (one, merged):
        error = sketches.rank_error
        assert 0 < error < (0.02 if k == 200 else 0.005)
        got = sketches.quantiles("layer", ranks)
        assert got.shape == (len(ranks), UNITS)
        for unit in range(UNITS):
            for rank, value in zip(ranks, got[:, unit], strict=True):
                low, high = true_rank_interval(values[:, unit], value)
                assert low - error <= rank <= high + error, (k, unit, rank, low, high, error)
    # Serialized and read back: the same answers.
    again = QuantileSketches.from_state(merged.state_dict())
    np.testing.assert_array_equal(again.quantiles("layer", ranks), merged.quantiles("layer", ranks))


def brute_force(values, labels, edges, reservoir, seed):
    """Per band and unit: class counts and the `reservoir` indices of smallest key, by plain loops."""
    keys = image_keys(seed, np.arange(N_IMAGES))
    counts = np.zeros((len(BAND_NAMES), UNITS, CLASSES), np.int64)
    members = {(b, u): [] for b in range(len(BAND_NAMES)) for u in range(UNITS)}
    for unit in range(UNITS):
        for image in range(N_IMAGES):
            band = int(sum(values[image, unit] >= edge for edge in edges[:, unit]))
            counts[band, unit, labels[image]] += 1
            members[(band, unit)].append(image)
    samples = {key: sorted(images, key=lambda i: keys[i])[:reservoir] for key, images in members.items()}
    return counts, samples


def test_bands_merged_over_shards_equal_one_pass_and_brute_force():
    values, labels = generated(1)
    edges = np.quantile(values, EDGE_RANKS, axis=0).astype(np.float32)  # any ascending edges will do
    edges[:, 4:8] = np.maximum(edges[:, 4:8], 0)  # post-ReLU units: several edges at 0 (ties go up)
    one = BandAccumulator({"layer": edges}, CLASSES, reservoir=8, seed=3)
    feed(one, values, labels, 0, N_IMAGES)
    shards = []
    for start, stop in [(4000, N_IMAGES), (0, 1500), (1500, 4000)]:  # out of order
        shard = BandAccumulator({"layer": edges}, CLASSES, reservoir=8, seed=3)
        feed(shard, values, labels, start, stop, batch=97)
        shards.append(BandAccumulator.from_state(shard.state_dict()))  # as a sweep's data shard saves it
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert torch.equal(merged.counts["layer"], one.counts["layer"])
    assert torch.equal(merged.samples["layer"]["index"], one.samples["layer"]["index"])
    counts, samples = brute_force(values, labels, edges, 8, 3)
    np.testing.assert_array_equal(one.counts["layer"].numpy(), counts)
    assert int(one.counts["layer"].sum()) == N_IMAGES * UNITS
    for (band, unit), expected in samples.items():
        assert one.sample("layer", band, unit) == expected
    # Another seed samples other images of the same band.
    other = BandAccumulator({"layer": edges}, CLASSES, reservoir=8, seed=4)
    feed(other, values, labels, 0, N_IMAGES)
    assert torch.equal(other.counts["layer"], one.counts["layer"])
    assert other.sample("layer", 2, 0) != one.sample("layer", 2, 0)


def test_image_keys_are_distinct_and_seeded():
    keys = image_keys(0, np.arange(200_000))
    assert len(np.unique(keys)) == len(keys)
    assert not np.array_equal(keys[:100], image_keys(1, np.arange(100)))


def test_class_composition_against_hand_computation():
    prior = np.array([0.5, 0.25, 0.25])
    got = class_composition(np.array([2, 6, 0]), prior, top=3)
    assert got["images"] == 8 and got["top_classes"] == [1, 0] and got["top_counts"] == [6, 2]
    assert got["top_lift"] == pytest.approx([0.75 / 0.25, 0.25 / 0.5])
    assert got["entropy"] == pytest.approx(-(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="k must be an integer in"):
        QuantileSketches({"layer": 3}, k=2)
    with pytest.raises(ValueError, match="reservoir must be an integer >= 0"):
        BandAccumulator({"layer": np.zeros((5, 3))}, 2, reservoir=-1)
    with pytest.raises(ValueError, match="ranks must be in"):
        QuantileSketches({"layer": 3}).quantiles("layer", [1.5])


def test_selectivity_pass_stores_each_units_quantiles_within_the_rank_error(tmp_path):
    # The stored quantiles are checked against the pass's own per-image activations (--save-activations),
    # read back from the run: the true rank of each stored value lies within the stored rank error.
    import pyarrow.dataset as ds

    import repsub
    from repsub.data.synthetic import make_image_folder
    from repsub.runstore.tables import STORED_RANKS

    data = make_image_folder(tmp_path / "images", num_classes=3, images_per_class=40, size=20)
    out = tmp_path / "run"
    repsub.selectivity(model="shallow_cnn", weights="random", seed=0, data=data, out=out, image_size=16,
                       layers=["conv2", "fc5"], batch_size=16, workers=0, progress=False, exemplars=0,
                       save_activations=["fc5"], quantile_k=50)  # fmt: skip
    run = repsub.open_run(out)
    stored = run.quantiles.to_table(filter=ds.field("layer") == "fc5").sort_by("unit").to_pylist()
    acts = np.stack(
        run.activations.to_table(filter=ds.field("layer") == "fc5").column("activations").to_pylist()
    )
    assert len(stored) == acts.shape[1] and acts.shape[0] == 120
    assert {r["layer"] for r in run.quantiles.to_table(columns=["layer"]).to_pylist()} == {"conv2", "fc5"}
    for row in stored:
        assert row["ranks"] == list(STORED_RANKS) and row["n_images"] == 120 and row["k"] == 50
        column = acts[:, row["unit"]]
        for rank, value in zip(row["ranks"], row["values"], strict=True):
            low, high = true_rank_interval(column, value)
            assert low - row["rank_error"] <= rank <= high + row["rank_error"]
        assert column.min() <= min(row["values"]) and max(row["values"]) <= column.max()  # values of the data
