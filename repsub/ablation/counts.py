"""Exact, mergeable counts of what ablating each unit does to a classifier, image shard by image shard.

For a set of units of one layer: per class, how many images the intact network classifies correctly
and how many it does with each unit ablated; the summed cross-entropy of each. Counts are integers and
loss sums float64, so two shards over disjoint images merge exactly (like the selectivity pass's class
sums), and the importance of a unit is read off the merged counts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class AblationCounts:
    def __init__(self, units: list[int], num_classes: int):
        self.indices = list(units)
        self.num_classes = num_classes
        self.class_counts = torch.zeros(num_classes, dtype=torch.int64)
        self.baseline_correct = torch.zeros(num_classes, dtype=torch.int64)
        self.baseline_loss = torch.zeros((), dtype=torch.float64)
        self.correct = torch.zeros(len(self.indices), num_classes, dtype=torch.int64)
        self.loss = torch.zeros(len(self.indices), dtype=torch.float64)

    @staticmethod
    def _per_class_correct(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """[..., B, C] logits, [B] labels -> [..., num_classes] correct counts."""
        hits = (logits.argmax(-1) == labels).to(torch.int64).cpu()  # [..., B]
        rows = hits.reshape(-1, hits.shape[-1])
        counts = torch.zeros(rows.shape[0], num_classes, dtype=torch.int64)
        counts.scatter_add_(1, labels.cpu().expand_as(rows), rows)
        return counts.reshape(*hits.shape[:-1], num_classes)

    @staticmethod
    def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the last batch dimension, float64: [..., B, C] -> [...]."""
        flat = logits.reshape(-1, logits.shape[-1]).float()
        target = labels.expand(logits.shape[:-1]).reshape(-1)
        return (
            F.cross_entropy(flat, target, reduction="none").double().reshape(logits.shape[:-1]).sum(-1).cpu()
        )

    def add_baseline(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The intact network's logits [B, C] on a batch with labels [B]."""
        labels = labels.to(logits.device, torch.int64)
        self.class_counts += torch.bincount(labels.cpu(), minlength=self.num_classes)
        self.baseline_correct += self._per_class_correct(logits, labels, self.num_classes)
        self.baseline_loss += self._loss(logits, labels)

    def add_ablated(self, first: int, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Logits [K, B, C] of the same batch with units[first : first + K] ablated, one per copy."""
        labels = labels.to(logits.device, torch.int64)
        block = slice(first, first + logits.shape[0])
        self.correct[block] += self._per_class_correct(logits, labels, self.num_classes)
        self.loss[block] += self._loss(logits, labels)

    def merge(self, other: AblationCounts) -> AblationCounts:
        if other.indices != self.indices or other.num_classes != self.num_classes:
            raise ValueError("cannot merge ablation counts of other units or class counts")
        for name in ("class_counts", "baseline_correct", "baseline_loss", "correct", "loss"):
            getattr(self, name).add_(getattr(other, name))
        return self

    @property
    def n_images(self) -> int:
        return int(self.class_counts.sum())

    def results(self) -> dict[str, np.ndarray]:
        """Per unit: baseline accuracy, accuracy drop (baseline - ablated), loss increase (mean per image)
        and per-class accuracy drop ([U, C]; NaN for a class without images)."""
        n = self.n_images
        if n == 0:
            raise ValueError("no images were seen")
        counts = self.class_counts.double()
        baseline = float(self.baseline_correct.sum()) / n
        ablated = self.correct.sum(dim=1).double() / n
        with np.errstate(invalid="ignore", divide="ignore"):
            class_drop = ((self.baseline_correct[None] - self.correct).double() / counts[None]).numpy()
        return {
            "units": np.asarray(self.indices, dtype=np.int64),
            "baseline_accuracy": np.full(len(self.indices), baseline),
            "accuracy_drop": (baseline - ablated).numpy(),
            "loss_increase": ((self.loss - self.baseline_loss) / n).numpy(),
            "class_accuracy_drop": class_drop,
            "n_images": np.full(len(self.indices), n, dtype=np.int64),
        }

    def state_dict(self) -> dict:
        return {"units": self.indices, "num_classes": self.num_classes, **{
            name: getattr(self, name).clone()
            for name in ("class_counts", "baseline_correct", "baseline_loss", "correct", "loss")
        }}  # fmt: skip

    @classmethod
    def from_state_dict(cls, state: dict) -> AblationCounts:
        counts = cls(state["units"], state["num_classes"])
        for name in ("class_counts", "baseline_correct", "baseline_loss", "correct", "loss"):
            getattr(counts, name).copy_(state[name])
        return counts
