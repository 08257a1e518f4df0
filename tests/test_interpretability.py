"""The simulated 2AFC interpretability index (repsub.core.interpretability)."""

import math

import numpy as np
import pytest

from repsub.core.interpretability import (
    labels_similarity,
    pixels_similarity,
    two_afc_index,
    unit_rng,
)


def test_a_unit_that_fires_exactly_for_one_class_scores_one():
    # Exemplars of a unit that fires for class 3 only: top 16 all class 3, bottom 16 of the other classes.
    rng = np.random.default_rng(0)
    top = np.full(16, 3)
    bottom = rng.choice([0, 1, 2, 4, 5], 16)
    index = two_afc_index(top, bottom, labels_similarity, unit_rng(0, "fc", 7))
    assert index == 1.0


def test_random_units_score_chance():
    # Random activations over random labels: top and bottom exemplars are random draws of the classes.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 5000)
    scores = []
    for unit in range(300):
        order = np.argsort(rng.random(5000))
        scores.append(two_afc_index(labels[order[:16]], labels[order[-16:]], labels_similarity,
                                    unit_rng(0, "l", unit)))  # fmt: skip
    # Each unit's index lies in [0, 1], so its standard deviation is at most 0.5 whatever the correlation of
    # its 20 trials (they share exemplars); the units are independent and symmetric about 0.5, so their mean
    # lies within 4 standard errors (4 x 0.5 / sqrt(300)) of 0.5 with probability above 99.99%.
    bound = 4 * 0.5 / math.sqrt(300)
    assert abs(np.mean(scores) - 0.5) < bound
    assert np.std(scores) > 0.0  # units differ: the index is not a constant


def test_hand_computed_pixels_trial():
    # Two identical images per side (whichever is drawn, the trial is the same); one reference each.
    top = np.zeros((2, 2))
    bottom = np.tile([3.0, 4.0], (2, 1))
    # q_top to (top ref, bottom ref): -(0, 5) -> z (+1, -1); q_bottom: -(5, 0) -> z (-1, +1).
    # right = m_top(q_top) + m_bottom(q_bottom) = 2; wrong = -2; p = softmax = 1 / (1 + exp(-4 / T)).
    for temperature in (1.0, 2.0):
        index = two_afc_index(top, bottom, pixels_similarity, unit_rng(0, "x", 0), trials=3, references=1,
                              temperature=temperature)  # fmt: skip
        assert index == pytest.approx(1 / (1 + math.exp(-4 / temperature)), rel=1e-12)
    # The task is symmetric: the sides swapped, the top query (now [3, 4]) is told apart as well.
    swapped = two_afc_index(bottom, top, pixels_similarity, unit_rng(0, "x", 0), references=1, temperature=1.0,
                            trials=3)  # fmt: skip
    assert swapped == pytest.approx(1 / (1 + math.exp(-4)), rel=1e-12)


def test_seeded_and_deterministic():
    rng = np.random.default_rng(2)
    top, bottom = rng.random((16, 4, 4, 3)), rng.random((16, 4, 4, 3))
    first = two_afc_index(top, bottom, pixels_similarity, unit_rng(5, "conv3", 11))
    assert first == two_afc_index(top, bottom, pixels_similarity, unit_rng(5, "conv3", 11))
    assert first != two_afc_index(top, bottom, pixels_similarity, unit_rng(6, "conv3", 11))


def test_too_few_exemplars_and_bad_temperature_are_named():
    with pytest.raises(ValueError, match="need 10 top exemplars, the unit has 4"):
        two_afc_index(np.zeros(4), np.zeros(16), labels_similarity, unit_rng(0, "l", 0))
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        two_afc_index(np.zeros(16), np.zeros(16), labels_similarity, unit_rng(0, "l", 0), temperature=0)
