"""Bands of a unit's activation: which images fall in each quantile range, counted per class and sampled.

Given each unit's band edges (activation values at EDGE_RANKS, from its quantile sketch:
repsub.core.quantiles), ``BandAccumulator`` assigns every (image, unit) a band, the number of edges at or below
the activation (0: below the 25% edge, ..., 6: at or above the 99.9% edge; a value equal to an edge goes to the
band above it), and keeps per band and unit:

- the images per class (int64 counts [bands, N, C]): exact integers;
- a seeded sample of `reservoir` image indices: those with the smallest key, the key a bijective 64-bit mix of
  (seed, image index) (splitmix64). The bottom-r of a union is the bottom-r of the parts' bottom-r's, and keys
  are distinct, so data shards merged in any order give exactly the sample of one pass (a bottom-k sketch).
"""

from __future__ import annotations

import numpy as np
import torch

from repsub.core.band_ranges import BAND_NAMES, EDGE_RANKS, class_composition, image_keys

__all__ = [
    "BAND_NAMES",
    "DEFAULT_RESERVOIR",
    "EDGE_RANKS",
    "BandAccumulator",
    "class_composition",
    "image_keys",
]

EMPTY = torch.iinfo(torch.int64).max  # the key of an empty reservoir slot (its index is -1)
DEFAULT_RESERVOIR = 16


class BandAccumulator:
    """Per band and unit of several layers: images per class and a seeded sample of image indices; exact and
    mergeable. `edges` {layer: [len(EDGE_RANKS), N]} ascending per unit."""

    def __init__(self, edges: dict[str, torch.Tensor | np.ndarray], num_classes: int,
                 reservoir: int = DEFAULT_RESERVOIR, seed: int = 0, device: str | torch.device = "cpu",
                 first_index: int = 0):  # fmt: skip
        if isinstance(reservoir, bool) or not isinstance(reservoir, int) or reservoir < 0:
            raise ValueError(f"the reservoir must be an integer >= 0, got {reservoir!r}")
        self.device = torch.device(device)
        self.num_classes, self.reservoir, self.seed = num_classes, reservoir, int(seed)
        self.n_bands = len(EDGE_RANKS) + 1
        self.edges = {
            name: torch.as_tensor(e, dtype=torch.float32).to(self.device) for name, e in edges.items()
        }
        self.next_index = (
            first_index  # a data shard's batches count from its first image: the dataset's index
        )
        self.n_images = 0
        self.counts = {
            name: torch.zeros(self.n_bands, e.shape[1], num_classes, dtype=torch.int64, device=self.device)
            for name, e in self.edges.items()
        }
        self.samples = {
            name: {
                "key": torch.full(
                    (self.n_bands, reservoir, e.shape[1]), EMPTY, dtype=torch.int64, device=self.device
                ),
                "index": torch.full(
                    (self.n_bands, reservoir, e.shape[1]), -1, dtype=torch.int64, device=self.device
                ),
            }
            for name, e in self.edges.items()
        }

    def bands(self, layer: str, values: torch.Tensor) -> torch.Tensor:
        """[B, N] int64: the band of each activation (the number of the unit's edges at or below it)."""
        edges = self.edges[layer]
        return (values[None] >= edges[:, None, :]).sum(0)  # a NaN activation falls below every edge: band 0

    def add(self, activations: dict[str, torch.Tensor], labels, index=None) -> None:
        count = len(labels)
        if index is None:
            index = np.arange(self.next_index, self.next_index + count)
        index = np.asarray(torch.as_tensor(index).cpu(), dtype=np.int64)
        if count:
            self.next_index = int(index[-1]) + 1
        self.n_images += count
        labels = torch.as_tensor(labels).to(self.device, torch.int64)
        keys = torch.from_numpy(image_keys(self.seed, index)).to(self.device)
        index_t = torch.from_numpy(index).to(self.device)
        for name, counts in self.counts.items():
            values = activations[name].detach().to(self.device, torch.float32).reshape(count, -1)
            units = values.shape[1]
            band = self.bands(name, values)  # [B, N]
            flat = (band * units + torch.arange(units, device=self.device)) * self.num_classes + labels[
                :, None
            ]
            counts.view(-1).index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.int64,
                                                                         device=self.device))  # fmt: skip
            if self.reservoir:
                self._sample(self.samples[name], band, keys, index_t)

    def _sample(self, kept: dict, band: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> None:
        """Fold a batch into the samples, in place, only where it changes them: an image enters the sample of
        its band of a unit only with a key below the band's largest kept key (keys are distinct: exactly the
        bottom-r of the union). Once a band's sample is full, few images of a long pass get in."""
        threshold = kept["key"][:, -1, :]  # [bands, N]: the r-th smallest kept key (EMPTY while not full)
        enters = keys[:, None] < threshold.gather(0, band)  # [B, N]
        cells = torch.unique(band[enters] * band.shape[1] + enters.nonzero()[:, 1])  # band x N + unit
        if not len(cells):
            return
        cell_band, cell_unit = cells // band.shape[1], cells % band.shape[1]
        mine = (band[:, cell_unit] == cell_band) & enters[:, cell_unit]  # [B, cells]
        key = torch.cat(
            [kept["key"][cell_band, :, cell_unit], torch.where(mine, keys[:, None], EMPTY).T], dim=1
        )
        position = torch.cat([kept["index"][cell_band, :, cell_unit],
                              torch.where(mine, index[:, None], -1).T], dim=1)  # fmt: skip
        smallest = key.topk(self.reservoir, dim=1, largest=False, sorted=True).indices
        kept["key"][cell_band, :, cell_unit] = key.gather(1, smallest)
        kept["index"][cell_band, :, cell_unit] = position.gather(1, smallest)

    def _fold(self, kept: dict, batch: dict) -> dict:
        key = torch.cat([kept["key"], batch["key"]], dim=1)
        index = torch.cat([kept["index"], batch["index"]], dim=1)
        smallest = key.topk(self.reservoir, dim=1, largest=False, sorted=True).indices
        return {"key": key.gather(1, smallest), "index": index.gather(1, smallest)}

    def merge(self, other: BandAccumulator) -> BandAccumulator:
        if (other.reservoir, other.seed, other.num_classes) != (
            self.reservoir,
            self.seed,
            self.num_classes,
        ) or (
            other.edges.keys() != self.edges.keys()
            or any(not torch.equal(other.edges[n].to(self.device), e) for n, e in self.edges.items())
        ):
            raise ValueError("cannot merge bands of other edges, layers, classes, reservoir or seed")
        for name in self.counts:
            self.counts[name] += other.counts[name].to(self.device)
            if self.reservoir:
                theirs = {f: t.to(self.device) for f, t in other.samples[name].items()}
                self.samples[name] = self._fold(self.samples[name], theirs)
        self.n_images += other.n_images
        return self

    def sample(self, layer: str, band: int, unit: int) -> list[int]:
        """The band's sampled image indices of one unit, in key order (fewer when the band holds fewer)."""
        index = self.samples[layer]["index"][band, :, unit].tolist()
        return [i for i in index if i >= 0]

    def image_indices(self) -> torch.Tensor:
        """Every sampled image index of any band, unit and layer, sorted, once each."""
        parts = [s["index"].reshape(-1).cpu() for s in self.samples.values()]
        found = torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.int64)
        return found[found >= 0]

    def state_dict(self) -> dict:
        return {
            "num_classes": self.num_classes, "reservoir": self.reservoir, "seed": self.seed,
            "n_images": self.n_images, "edges": {n: e.cpu() for n, e in self.edges.items()},
            "counts": {n: c.cpu() for n, c in self.counts.items()},
            "samples": {n: {f: t.cpu() for f, t in s.items()} for n, s in self.samples.items()},
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict, device: str | torch.device = "cpu") -> BandAccumulator:
        acc = cls(state["edges"], state["num_classes"], state["reservoir"], state["seed"], device)
        acc.n_images = int(state["n_images"])
        acc.counts = {n: c.to(acc.device) for n, c in state["counts"].items()}
        acc.samples = {n: {f: t.to(acc.device) for f, t in s.items()} for n, s in state["samples"].items()}
        return acc
