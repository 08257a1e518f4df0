import numpy as np
import pytest
import torch

from repsub.core.selectivity import ClassMeanAccumulator, selectivity_index


def test_index_matches_hand_computed_values():
    # unit 0: means (4, 1, 1) -> mu_max 4, mu_rest 1 -> 3/5
    # unit 1: means (2, 2, 2) -> 0
    # unit 2: only class 2 fires (0, 0, 6) -> mu_rest 0 -> 1
    # unit 3: dead
    means = np.array([[4.0, 2.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0], [1.0, 2.0, 6.0, 0.0]])
    result = selectivity_index(means)
    np.testing.assert_allclose(result.selectivity[:3], [0.6, 0.0, 1.0])
    assert np.isnan(result.selectivity[3])
    assert result.dead.tolist() == [False, False, False, True]
    assert result.top_class.tolist() == [0, 0, 2, -1]


def test_dead_units_raise_no_warning():
    with np.errstate(all="raise"):
        result = selectivity_index(np.zeros((5, 3)))
    assert result.dead.all() and np.isnan(result.selectivity).all()


def test_logits_can_be_negative_and_zero_denominator_is_nan():
    means = np.array([[1.0, -3.0], [-1.0, -1.0]])  # unit 0: mu_max 1, mu_rest -1 -> denominator 0
    result = selectivity_index(means)
    assert np.isnan(result.selectivity[0]) and not result.dead[0]
    assert result.selectivity[1] == pytest.approx((-1 - -3) / (-1 + -3))


def test_accumulator_equals_numpy_class_means():
    rng = np.random.default_rng(0)
    acts = rng.random((50, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    labels[:4] = [0, 1, 2, 3]
    acc = ClassMeanAccumulator({"l": 6}, 4)
    for start in range(0, 50, 16):  # batches of 16 with a short last one
        acc.add(
            {"l": torch.from_numpy(acts[start : start + 16])}, torch.from_numpy(labels[start : start + 16])
        )
    expected = np.stack([acts[labels == c].astype(np.float64).mean(0) for c in range(4)])
    np.testing.assert_allclose(acc.class_means("l").numpy(), expected, rtol=1e-12)
    assert acc.n_images == 50


def test_shards_merge_exactly_into_the_single_pass():
    rng = np.random.default_rng(1)
    acts = torch.from_numpy(rng.random((40, 5)))
    labels = torch.from_numpy(rng.integers(0, 3, 40))
    whole = ClassMeanAccumulator({"a": 5}, 3)
    whole.add({"a": acts}, labels)
    parts = [ClassMeanAccumulator({"a": 5}, 3) for _ in range(3)]
    for part, idx in zip(parts, np.array_split(np.arange(40), 3), strict=True):
        part.add({"a": acts[idx]}, labels[idx])
    merged = ClassMeanAccumulator.from_state_dict(parts[0].state_dict())
    merged.merge(parts[1]).merge(parts[2])
    assert torch.equal(merged.counts, whole.counts)
    np.testing.assert_allclose(merged.sums["a"].numpy(), whole.sums["a"].numpy(), rtol=1e-15)


def test_class_without_images_is_refused():
    acc = ClassMeanAccumulator({"a": 2}, 3)
    acc.add({"a": torch.ones(2, 2)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class index"):
        acc.class_means("a")
