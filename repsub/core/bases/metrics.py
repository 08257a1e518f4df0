"""How good a basis is, on held-out activation vectors (README, "Bases"):

- `fve`: fraction of variance explained, 1 - sum ||x - x_hat||² / sum ||x - mean||² (mean: of the held-out data).
- `mean_l0`: active responses (response != 0) per position, averaged over positions.
- `dead`: directions never active on the held-out data.
- `stability`: two fits with different seeds, their directions matched one to one by |cosine| (the Hungarian
  method, scipy.optimize.linear_sum_assignment); the mean matched |cosine|. 1.0: the same directions.
"""

from __future__ import annotations

import numpy as np
import torch

from repsub.core.bases.basis import Basis

BATCH = 65536  # held-out vectors encoded at once


def _chunks(x: torch.Tensor):
    for first in range(0, len(x), BATCH):
        yield x[first : first + BATCH]


@torch.no_grad()
def fve(basis: Basis, held_out: torch.Tensor) -> float:
    """1 - sum ||x - x_hat||² / sum ||x - mean||², float64 sums over the held-out vectors [N, C]."""
    x_all = held_out.to(torch.float32)
    mean = x_all.to(torch.float64).mean(dim=0)
    error = total = 0.0
    for x in _chunks(x_all):
        x_hat = basis.decode(basis.encode(x)[0])
        error += float((x.double() - x_hat.double()).pow(2).sum())
        total += float((x.double() - mean).pow(2).sum())
    return 1.0 - error / total if total > 0 else float("nan")


@torch.no_grad()
def activity(basis: Basis, held_out: torch.Tensor) -> tuple[float, int]:
    """(mean L0: active responses per position, dead: directions never active) on the held-out vectors."""
    active_count = 0
    ever = torch.zeros(basis.size, dtype=torch.bool)
    for x in _chunks(held_out.to(torch.float32)):
        active = basis.encode(x)[0] != 0
        active_count += int(active.sum())
        ever |= active.any(dim=0)
    return active_count / max(len(held_out), 1), int((~ever).sum())


def stability(first: torch.Tensor, second: torch.Tensor) -> float:
    """The mean |cosine| of two sets of directions [K, C] matched one to one (Hungarian, maximizing)."""
    from scipy.optimize import linear_sum_assignment

    a = first.to(torch.float64)
    b = second.to(torch.float64)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-300)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cosines = (a @ b.T).abs().numpy()
    rows, cols = linear_sum_assignment(cosines, maximize=True)
    return float(np.mean(cosines[rows, cols]))


def basis_metrics(basis: Basis, held_out: torch.Tensor, refit: Basis | None = None) -> dict:
    """{"fve", "mean_l0", "dead", "stability", "n_held_out"} (stability NaN without a second fit `refit`)."""
    mean_l0, dead = activity(basis, held_out)
    return {
        "fve": fve(basis, held_out),
        "mean_l0": mean_l0,
        "dead": dead,
        "stability": stability(basis.directions, refit.directions) if refit is not None else float("nan"),
        "n_held_out": len(held_out),
    }
