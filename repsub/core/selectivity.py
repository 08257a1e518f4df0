"""Class selectivity (Morcos et al. 2018): streaming per-class sums and the selectivity index.

``ClassMeanAccumulator`` adds batches of unit activations into float64 per-class sums and
counts; two accumulators over disjoint data merge exactly (sums add), so a dataset can be split
into shards anywhere. ``selectivity_index`` turns class means into the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class ClassMeanAccumulator:
    """Per-class sums (float64) and counts of unit activations, for several layers at once."""

    def __init__(self, layer_units: dict[str, int], num_classes: int, device: str | torch.device = "cpu"):
        if num_classes < 2:
            raise ValueError(f"selectivity needs two classes or more, got {num_classes}")
        self.num_classes = num_classes
        self.sums = {
            name: torch.zeros(num_classes, units, dtype=torch.float64, device=device)
            for name, units in layer_units.items()
        }
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=device)

    def add(self, activations: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Add one batch: activations {layer: [B, N]} and labels [B] (class indices)."""
        labels = labels.to(self.counts.device, torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels outside [0, {self.num_classes}): {labels.min().item()}..{labels.max().item()}"
            )
        for name, sums in self.sums.items():
            sums.index_add_(0, labels, activations[name].detach().to(sums.device, torch.float64))
        self.counts += torch.bincount(labels, minlength=self.num_classes)

    def merge(self, other: ClassMeanAccumulator) -> ClassMeanAccumulator:
        """Add another accumulator's sums and counts into this one (exact: sums of disjoint data)."""
        if other.num_classes != self.num_classes or other.sums.keys() != self.sums.keys():
            raise ValueError("cannot merge accumulators of different layers or class counts")
        for name in self.sums:
            self.sums[name] += other.sums[name].to(self.sums[name].device)
        self.counts += other.counts.to(self.counts.device)
        return self

    @property
    def n_images(self) -> int:
        return int(self.counts.sum())

    def class_means(self, layer: str) -> torch.Tensor:
        """[C, N] float64 class means; every class must have been seen at least once."""
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"no images seen for class index(es) {empty}: their means are undefined")
        return self.sums[layer] / self.counts[:, None].to(torch.float64)

    def state_dict(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "counts": self.counts.cpu(),
            "sums": {name: s.cpu() for name, s in self.sums.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: str | torch.device = "cpu") -> ClassMeanAccumulator:
        acc = cls({name: s.shape[1] for name, s in state["sums"].items()}, state["num_classes"], device)
        acc.counts += state["counts"].to(device)
        for name, s in state["sums"].items():
            acc.sums[name] += s.to(device)
        return acc


@dataclass
class Selectivity:
    """Per-unit results for one layer (numpy arrays of length N)."""

    selectivity: np.ndarray  # float64, NaN for dead units
    top_class: np.ndarray  # int64, the class of the largest mean (-1 for dead units)
    dead: np.ndarray  # bool, every class mean is zero


def selectivity_index(class_means: np.ndarray | torch.Tensor) -> Selectivity:
    """(mu_max - mu_rest) / (mu_max + mu_rest) per unit, from class means [C, N].

    mu_max is the largest class mean and mu_rest the mean of the other C-1 class means. For
    post-ReLU units (means >= 0) the index lies in [0, 1]. A unit whose class means are all zero is
    dead: NaN, top_class -1. For logits (which can be negative) the index is unbounded, and NaN
    where mu_max + mu_rest == 0.
    """
    means = np.asarray(
        class_means.cpu() if isinstance(class_means, torch.Tensor) else class_means, dtype=np.float64
    )
    if means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(f"class means must be [classes >= 2, units], got shape {means.shape}")
    num_classes = means.shape[0]
    top = means.argmax(axis=0)
    mu_max = means.max(axis=0)
    mu_rest = (means.sum(axis=0) - mu_max) / (num_classes - 1)
    dead = np.all(means == 0, axis=0)
    denom = mu_max + mu_rest
    usable = ~dead & (denom != 0)
    index = np.full(means.shape[1], np.nan)
    index[usable] = (mu_max[usable] - mu_rest[usable]) / denom[usable]
    return Selectivity(selectivity=index, top_class=np.where(dead, -1, top).astype(np.int64), dead=dead)
