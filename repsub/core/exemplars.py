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


def select_extremes(candidates: dict[str, torch.Tensor], k: int, side: str,
                    ties_in_order: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """The k rows per column of `candidates` ({values, index, labels}: [M, N]) that come first in the side's
    total order: activation (descending for top, ascending for bottom), then the lower image index.
    `ties_in_order`: rows of equal activation already come in index order (kept exemplars, then a batch of
    later images), so the sort by index is skipped."""
    ordered = candidates
    if not ties_in_order:  # indices are distinct within a column: a deterministic first order
        by_index = candidates["index"].argsort(dim=0)
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
        self._last_index = -1  # the largest image index added (merges aside): `add` knows a batch is later
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
        # Kept exemplars are in the side's order, equal values by index; a batch of later images (the pass's
        # running count, or a shard's ascending indices) then keeps equal values in index order when appended.
        later = count > 0 and bool((index[1:] > index[:-1]).all()) and int(index[0]) > self._last_index
        self._last_index = max(self._last_index, int(index.max())) if count else self._last_index
        for name, sides in self.state.items():
            values = activations[name].detach().to(self.device, torch.float32).reshape(count, -1)
            units = values.shape[1]
            batch = {
                "values": values,
                "index": index[:, None].expand(count, units),
                "labels": labels[:, None].expand(count, units),
            }
            for side in SIDES:
                sides[side] = self._fold_screened(sides[side], batch, side, later)

    def _fold_screened(self, kept: dict, batch: dict, side: str, later: bool) -> dict:
        """`_fold`, on the units only where the batch holds a candidate: once a unit has k exemplars, a value
        strictly beyond its k-th (below it for the top side) cannot enter, so those units keep theirs as they
        are. The screen lets through anything not strictly beyond (ties and NaN included): the result is the
        full fold's, exactly; on a long pass most units take nothing from a batch."""
        if len(kept["values"]) < self.k:
            return self._fold(kept, batch, side, later)
        kth = kept["values"][self.k - 1]
        beyond = batch["values"] < kth if side == "top" else batch["values"] > kth
        columns = (~beyond).any(dim=0).nonzero().squeeze(1)
        if len(columns) == beyond.shape[1]:
            return self._fold(kept, batch, side, later)
        if not len(columns):
            return kept
        folded = self._fold({f: t[:, columns] for f, t in kept.items()},
                            {f: t[:, columns] for f, t in batch.items()}, side, later)  # fmt: skip
        out = {f: t.clone() for f, t in kept.items()}
        for f, t in folded.items():
            out[f][:, columns] = t
        return out

    def _fold(self, kept: dict, batch: dict, side: str, later: bool = False) -> dict:
        candidates = {name: torch.cat([kept[name], batch[name]]) for name in FIELDS}
        return select_extremes(candidates, self.k, side, ties_in_order=later)

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
        self._last_index = self._largest_kept_index()
        return self

    def _largest_kept_index(self) -> int:
        """The largest image index among the kept exemplars (-1: none): later batches are beyond it."""
        indices = [
            t["index"].max() for sides in self.state.values() for t in sides.values() if t["index"].numel()
        ]
        return int(max(indices)) if indices else -1

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
        acc._last_index = acc._largest_kept_index()
        return acc
