"""Exemplars: for every unit, the k dataset images that drive it most (top) and least (bottom).

``ExemplarAccumulator`` keeps, per layer, the current top-k and bottom-k of every unit as [k, N] tensors of
activation, image index and label, and folds each batch [B, N] into them with one sort of the k + B
candidates per side (vectorized over units). The order is total: by activation (descending for top,
ascending for bottom), then by the lower image index, so ties are broken the same way whatever the batch
order. Two accumulators over disjoint images merge exactly: the top-k of a union is the top-k of the two
top-k's under a total order, so data shards merged in any order equal one unsharded pass.

A NaN activation sorts after every number on both sides (it becomes an exemplar only when a unit has fewer
than k finite activations).
"""

from __future__ import annotations

import torch

SIDES = ("top", "bottom")
FIELDS = ("values", "index", "labels")


def _empty(units: int, device) -> dict[str, torch.Tensor]:
    return {
        "values": torch.zeros(0, units, dtype=torch.float32, device=device),
        "index": torch.zeros(0, units, dtype=torch.int64, device=device),
        "labels": torch.zeros(0, units, dtype=torch.int32, device=device),
    }


def select_extremes(candidates: dict[str, torch.Tensor], k: int, side: str) -> dict[str, torch.Tensor]:
    """The k rows per column of `candidates` ({values, index, labels}: [M, N]) that come first in the side's
    total order: activation (descending for top, ascending for bottom), then the lower image index."""
    by_index = candidates["index"].argsort(
        dim=0
    )  # indices are distinct within a column: a deterministic first order
    ordered = {name: tensor.gather(0, by_index) for name, tensor in candidates.items()}
    last = float("-inf") if side == "top" else float("inf")  # NaN sorts after every number
    key = torch.where(torch.isnan(ordered["values"]), last, ordered["values"])
    # A stable sort keeps equal activations in index order: ties go to the lower index.
    by_value = key.sort(dim=0, descending=side == "top", stable=True).indices[:k]
    return {name: tensor.gather(0, by_value) for name, tensor in ordered.items()}


class ExemplarAccumulator:
    """Top-k and bottom-k images of every unit of several layers, exact and mergeable.

    >>> acc = ExemplarAccumulator({"fc7": 4096}, k=16)
    >>> for images, labels in batches:
    ...     acc.add(reader(images), labels)        # image indices: the running count from `first_index`
    >>> acc.side("fc7", "top")["index"]           # [16, 4096] image indices, best first
    """

    def __init__(
        self, layer_units: dict[str, int], k: int, first_index: int = 0, device: str | torch.device = "cpu"
    ):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"exemplars per side must be an integer >= 1, got {k!r}")
        self.k = k
        self.device = torch.device(device)
        self.next_index = first_index
        self.n_images = 0
        self.state = {
            name: {side: _empty(units, self.device) for side in SIDES} for name, units in layer_units.items()
        }

    def add(self, activations: dict[str, torch.Tensor], labels: torch.Tensor, index=None) -> None:
        """One batch: activations {layer: [B, N]} (other layers ignored), labels [B]; `index` [B] (the images'
        dataset indices) defaults to the running count."""
        count = len(labels)
        if index is None:
            index = torch.arange(self.next_index, self.next_index + count, dtype=torch.int64)
        index = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        if count:
            self.next_index = int(index[-1]) + 1
        labels = torch.as_tensor(labels).to(self.device, torch.int32)
        self.n_images += count
        for name, sides in self.state.items():
            values = activations[name].detach().to(self.device, torch.float32).reshape(count, -1)
            units = values.shape[1]
            batch = {
                "values": values,
                "index": index[:, None].expand(count, units),
                "labels": labels[:, None].expand(count, units),
            }
            for side in SIDES:
                sides[side] = self._fold(sides[side], batch, side)

    def _fold(self, kept: dict, batch: dict, side: str) -> dict:
        candidates = {name: torch.cat([kept[name], batch[name]]) for name in FIELDS}
        return select_extremes(candidates, self.k, side)

    def merge(self, other: ExemplarAccumulator) -> ExemplarAccumulator:
        """Fold another accumulator's exemplars (over other images) into this one: exact, in any order."""
        if other.k != self.k or other.state.keys() != self.state.keys():
            raise ValueError(
                f"cannot merge exemplars of other layers or k (k {self.k} and {other.k}; layers "
                f"{sorted(self.state)} and {sorted(other.state)})"
            )
        for name, sides in self.state.items():
            for side in SIDES:
                theirs = {field: t.to(self.device) for field, t in other.state[name][side].items()}
                sides[side] = self._fold(sides[side], theirs, side)
        self.n_images += other.n_images
        return self

    def side(self, layer: str, side: str) -> dict[str, torch.Tensor]:
        """{values float32, index int64, labels int32}, each [min(k, images), N], best first."""
        if side not in SIDES:
            raise ValueError(f"unknown side {side!r}; valid sides: {', '.join(SIDES)}")
        return self.state[layer][side]

    def image_indices(self) -> torch.Tensor:
        """Every image index any unit of any layer refers to, sorted, once each."""
        parts = [t["index"].reshape(-1).cpu() for sides in self.state.values() for t in sides.values()]
        return torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.int64)

    def state_dict(self) -> dict:
        return {
            "k": self.k,
            "n_images": self.n_images,
            "layers": {
                name: {side: {f: t.cpu() for f, t in fields.items()} for side, fields in sides.items()}
                for name, sides in self.state.items()
            },
        }

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> ExemplarAccumulator:
        layers = state["layers"]
        acc = cls({name: sides["top"]["values"].shape[1] for name, sides in layers.items()}, state["k"],
                  device=device)  # fmt: skip
        acc.n_images = int(state["n_images"])
        acc.state = {
            name: {side: {f: t.to(acc.device) for f, t in fields.items()} for side, fields in sides.items()}
            for name, sides in layers.items()
        }
        return acc
