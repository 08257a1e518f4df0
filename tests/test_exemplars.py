"""The exemplar accumulator (repsub.core.exemplars) against a brute-force numpy sort."""

import itertools

import numpy as np
import pytest
import torch

from repsub.core.exemplars import ExemplarAccumulator


def brute_force(values: np.ndarray, index: np.ndarray, labels: np.ndarray, k: int, side: str):
    """Per unit, the k (value, index, label) first by value (desc for top, asc for bottom) then by lower index,
    NaN last: np.lexsort on the whole column, one unit at a time."""
    out = {"values": [], "index": [], "labels": []}
    for unit in range(values.shape[1]):
        column = values[:, unit]
        nan = np.isnan(column)
        key = np.where(nan, 0.0, -column if side == "top" else column)
        order = np.lexsort((index, key, nan))[:k]  # last key is primary: NaN last, then value, then index
        out["values"].append(column[order])
        out["index"].append(index[order])
        out["labels"].append(labels[order])
    return {name: np.stack(parts, axis=1) for name, parts in out.items()}


def accumulate(values, labels, k, batch, first_index=0, index=None):
    acc = ExemplarAccumulator({"l": values.shape[1]}, k, first_index=first_index)
    for start in range(0, len(values), batch):
        part = slice(start, start + batch)
        acc.add(
            {"l": torch.from_numpy(values[part])},
            torch.from_numpy(labels[part]),
            None if index is None else index[part],
        )
    return acc


def assert_equal(acc, expected, side):
    got = acc.side("l", side)
    np.testing.assert_array_equal(got["index"].numpy(), expected["index"])
    np.testing.assert_array_equal(got["labels"].numpy(), expected["labels"])
    np.testing.assert_array_equal(got["values"].numpy(), expected["values"])


def tied_activations(rng, images, units):
    """Few distinct values (post-ReLU-like zeros and repeats): many ties at the top and the bottom."""
    values = rng.integers(0, 4, (images, units)).astype(np.float32)
    values[rng.random((images, units)) < 0.3] = 0.0
    return values


@pytest.mark.parametrize("side", ["top", "bottom"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_single_pass_equals_brute_force_with_ties(side, batch):
    rng = np.random.default_rng(0)
    values = tied_activations(rng, 100, 9)
    values[:, 0] = rng.normal(size=100)  # one unit without ties
    labels = rng.integers(0, 5, 100).astype(np.int64)
    acc = accumulate(values, labels, k=6, batch=batch)
    expected = brute_force(values, np.arange(100), labels, 6, side)
    assert_equal(acc, expected, side)
    # ties really are broken by the lower index: a unit whose activations are all equal
    flat = accumulate(np.ones((20, 1), np.float32), np.zeros(20, np.int64), k=4, batch=3)
    assert flat.side("l", side)["index"][:, 0].tolist() == [0, 1, 2, 3]


def test_shards_merge_exactly_in_any_order():
    rng = np.random.default_rng(1)
    values = tied_activations(rng, 90, 7)
    labels = rng.integers(0, 3, 90).astype(np.int64)
    whole = accumulate(values, labels, k=5, batch=16)
    bounds = [(0, 25), (25, 31), (31, 90)]
    shards = [accumulate(values[a:b], labels[a:b], k=5, batch=8, first_index=a) for a, b in bounds]
    for order in itertools.permutations(range(3)):
        merged = ExemplarAccumulator.from_state(shards[order[0]].state_dict())
        for position in order[1:]:
            merged.merge(ExemplarAccumulator.from_state(shards[position].state_dict()))
        assert merged.n_images == 90
        for side in ("top", "bottom"):
            for field in ("values", "index", "labels"):
                assert torch.equal(merged.side("l", side)[field], whole.side("l", side)[field]), (order, side)


def test_explicit_indices_and_nan_sort_last():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(30, 4)).astype(np.float32)
    values[::3, 1] = np.nan
    values[:, 2] = np.nan  # a unit without any finite activation: NaN rows, by index
    index = rng.permutation(1000)[:30].astype(np.int64)  # indices need not be contiguous nor sorted
    labels = rng.integers(0, 4, 30).astype(np.int64)
    acc = accumulate(values, labels, k=8, batch=5, index=index)
    for side in ("top", "bottom"):
        assert_equal(acc, brute_force(values, index, labels, 8, side), side)
    assert acc.image_indices().tolist() == sorted(set(acc.side("l", "top")["index"].flatten().tolist())
                                                  | set(acc.side("l", "bottom")["index"].flatten().tolist()))  # fmt: skip


def test_fewer_images_than_k_and_several_layers():
    acc = ExemplarAccumulator({"a": 2, "b": 3}, k=16)
    acc.add({"a": torch.tensor([[1.0, 0.0], [2.0, -1.0]]), "b": torch.zeros(2, 3)}, torch.tensor([0, 1]))
    top = acc.side("a", "top")
    assert top["values"].shape == (2, 2)
    assert top["index"][:, 0].tolist() == [1, 0] and top["index"][:, 1].tolist() == [0, 1]
    assert acc.side("a", "bottom")["labels"][:, 0].tolist() == [0, 1]
    assert acc.side("b", "top")["index"][:, 2].tolist() == [0, 1]


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="got 0"):
        ExemplarAccumulator({"a": 2}, k=0)
    with pytest.raises(ValueError, match="valid sides: top, bottom"):
        ExemplarAccumulator({"a": 2}, k=1).side("a", "middle")
    with pytest.raises(ValueError, match="k 2 and 3"):
        ExemplarAccumulator({"a": 2}, k=2).merge(ExemplarAccumulator({"a": 2}, k=3))
