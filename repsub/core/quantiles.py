"""The range of a unit's activation over the data: one mergeable quantile sketch per unit.

``QuantileSketches`` keeps, per layer, a vector of Apache DataSketches KLL sketches (one per unit,
`datasketches.vector_of_kll_floats_sketches`), fed a whole batch [B, N] per call. A KLL sketch of parameter
`k` answers any quantile with a normalized rank error of at most `rank_error` (about 1.3% for k = 200,
0.17% for k = 2000; the bound that holds with 99% confidence, for one quantile asked of one sketch): the value
returned for rank r has a true rank within r +- rank_error. Sketches of two data shards merge into one with the
same bound, whatever the order. They are randomized (the library's compactions draw an unseeded coin), so two
passes agree within the bound, not bit for bit; what depends on a unit's quantiles downstream (its bands,
repsub.core.bands) takes them from the stored `quantiles` table, so it is exact given those.

An additive rank error is large against the extreme tail: at k = 200 the 0.999 quantile's rank is known to
+-1.3%, wider than the top-0.1% band itself. Choose `k` from the narrowest band you read (k = 2000 is
+-0.17%), or read the extreme tail from the exact exemplars (repsub.core.exemplars).
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_K = 200


def _sketches(k: int, units: int):
    import datasketches  # a compiled extension: loaded only where sketches are made

    return datasketches.vector_of_kll_floats_sketches(k, units)


class QuantileSketches:
    """A KLL sketch of every unit's activation, for several layers; mergeable across data shards.

    >>> sketches = QuantileSketches({"fc7": 4096}, k=200)
    >>> sketches.add({"fc7": activations}, labels)           # [B, 4096] per batch (an on_batch callback)
    >>> sketches.quantiles("fc7", [0.25, 0.5, 0.9])          # [3, 4096]
    """

    def __init__(self, layer_units: dict[str, int], k: int = DEFAULT_K):
        if isinstance(k, bool) or not isinstance(k, int) or not 8 <= k <= 65535:
            raise ValueError(f"the sketch parameter k must be an integer in [8, 65535], got {k!r}")
        self.k = k
        self.layer_units = dict(layer_units)
        self.n_images = 0
        self.sketches = {name: _sketches(k, units) for name, units in self.layer_units.items()}

    @property
    def rank_error(self) -> float:
        """The normalized rank error of one quantile of one sketch (99% confidence), for this k."""
        import datasketches

        return float(datasketches.kll_floats_sketch.get_normalized_rank_error(self.k, False))

    def add(self, activations: dict[str, torch.Tensor], labels, index=None) -> None:
        """One batch: activations {layer: [B, N]} (other layers ignored); labels and index are not used."""
        count = len(labels)
        for name, sketch in self.sketches.items():
            values = activations[name].detach().to("cpu", torch.float32).reshape(count, -1).numpy()
            if count:
                sketch.update(np.ascontiguousarray(values))  # NaN values are skipped by the library
        self.n_images += count

    def merge(self, other: QuantileSketches) -> QuantileSketches:
        if other.k != self.k or other.layer_units != self.layer_units:
            raise ValueError(
                f"cannot merge sketches of other layers or k (k {self.k} and {other.k}; layers "
                f"{sorted(self.layer_units)} and {sorted(other.layer_units)})"
            )
        for name, sketch in self.sketches.items():
            sketch.merge(other.sketches[name])
        self.n_images += other.n_images
        return self

    def quantiles(self, layer: str, ranks) -> np.ndarray:
        """[len(ranks), N] float32: each unit's value at each rank (NaN for a unit without any value)."""
        ranks = np.atleast_1d(np.asarray(ranks, dtype=np.float64))
        if ((ranks < 0) | (ranks > 1)).any():
            raise ValueError(f"ranks must be in [0, 1], got {ranks.tolist()}")
        sketch = self.sketches[layer]
        if self.n_images == 0:
            return np.full((len(ranks), self.layer_units[layer]), np.nan, np.float32)
        return np.asarray(sketch.get_quantiles(ranks), dtype=np.float32).T  # the library gives [N, ranks]

    def state_dict(self) -> dict:
        return {
            "k": self.k,
            "n_images": self.n_images,
            "layers": {
                name: [bytes(b) for b in sketch.serialize()] for name, sketch in self.sketches.items()
            },
        }

    @classmethod
    def from_state(cls, state: dict) -> QuantileSketches:
        sketches = cls({name: len(parts) for name, parts in state["layers"].items()}, state["k"])
        for name, parts in state["layers"].items():
            for unit, data in enumerate(parts):
                sketches.sketches[name].deserialize(data, unit)
        sketches.n_images = int(state["n_images"])
        return sketches
