import numpy as np
import torch

from repsub.core.rs import representative_substitution


def brute_force_rs(row: np.ndarray, unit: int) -> float:
    return sum(1 for value in row if value > row[unit]) / len(row)


def test_rs_matches_brute_force_count():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(20, 13)).astype(np.float32)
    acts[3, :] = 0.0  # all tied: nobody is strictly greater
    acts[4, 5:9] = acts[4, 2]  # ties with the unit do not count
    units = rng.integers(0, 13, 20)
    units[3], units[4] = 7, 2
    got = representative_substitution(torch.from_numpy(acts), torch.from_numpy(units)).numpy()
    expected = [brute_force_rs(acts[b], units[b]) for b in range(20)]
    np.testing.assert_array_equal(got, expected)
    assert got[3] == 0.0


def test_rs_hand_computed():
    acts = torch.tensor([[0.5, 2.0, 1.0, 0.5]])
    assert representative_substitution(acts, torch.tensor([0])).item() == 0.5  # 2.0 and 1.0 exceed 0.5
    assert representative_substitution(acts, torch.tensor([1])).item() == 0.0
