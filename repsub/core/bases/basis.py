"""The `Basis`: K directions of one layer's activation space and the encoder that reads them.

    response, pre = basis.encode(x)     # x [..., C] -> response [..., K]; pre [..., K] or None
    x_hat = basis.decode(response)      # [..., K] -> [..., C]

Every encoder is `y = (x - center) @ encoder_weight.T + encoder_bias` followed by one nonlinearity:

- `linear`: the response is y (unit, random, pca, ica, kmeans, vectors); `pre` is None.
- `relu`: the response is relu(y) (nmf); `pre` is y.
- `topk`: relu(y) where it is among the `top_k` largest of its position, else 0 (sae); `pre` is y.

`pre` is what AM climbs where the response is 0 (the hybrid own term, as a unit's pre-activation). For a `topk`
encoder the optimization climbs `topk_margin(pre)` instead (repsub.capture.reader, repsub.optimize.own_direction):
y alone ignores the competition, and a direction whose y rises while its competitors rise faster stays out of the
top k (docs/science.md, section 5). Decoding is
`response @ directions + center`, except for kmeans (`decode_top1`): a position is the projection on its
best-matching centroid, so only the largest response decodes.

The basis is stored as plain tensors and a JSON-able dict (`state_dict`, `from_state`): no pickle. Its
`content_hash` is the SHA-256 of its canonical bytes (settings as sorted JSON, then each tensor's name, dtype,
shape and little-endian float32 bytes, in name order): the same fit always has the same hash, any other fit
another.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch

ENCODERS = ("linear", "relu", "topk")
TENSORS = ("directions", "encoder_weight", "encoder_bias", "center")
SIGNED_KINDS = ("random", "pca", "ica", "vectors")  # projections: their responses take either sign


@dataclass
class Basis:
    """A fitted basis of one layer (module docstring). Tensors are float32 on the CPU."""

    kind: str
    layer: str
    directions: torch.Tensor  # [K, C]: the decoder's rows (for projection and ablation)
    encoder_weight: torch.Tensor  # [K, C]
    encoder_bias: torch.Tensor  # [K]
    center: torch.Tensor  # [C]: subtracted before encoding, added back after decoding
    encoder: str = "linear"  # a key of ENCODERS
    top_k: int | None = None  # the topk encoder's active responses per position
    decode_top1: bool = False  # kmeans: a position decodes from its best-matching direction only
    name: str = ""  # the name it is stored under in a run (not part of its content)
    settings: dict = field(default_factory=dict)  # how it was fitted (JSON-able): kind-specific

    def __post_init__(self):
        for name in TENSORS:
            setattr(self, name, getattr(self, name).detach().to("cpu", torch.float32).contiguous())
        k, c = self.directions.shape
        shapes = {"encoder_weight": (k, c), "encoder_bias": (k,), "center": (c,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} of shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; valid: {', '.join(ENCODERS)}")
        if self.encoder == "topk" and not (self.top_k and 0 < self.top_k <= k):
            raise ValueError(f"a topk encoder needs 0 < top_k <= K = {k}, got {self.top_k}")

    @property
    def K(self) -> int:  # noqa: N802  (the readout protocol's name: repsub.core.readout)
        return self.size

    @property
    def C(self) -> int:  # noqa: N802
        return self.n_channels

    @property
    def size(self) -> int:
        """K, the number of directions."""
        return self.directions.shape[0]

    @property
    def n_channels(self) -> int:
        """C, the size of the layer's activation vector at one position."""
        return self.directions.shape[1]

    @property
    def signed(self) -> bool:
        """Whether responses take either sign by construction (projections), oriented by `orient_signs`."""
        return self.kind in SIGNED_KINDS

    # -------------------------------------------------------------- reading

    def _on(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return getattr(self, name).to(x.device, x.dtype)

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., C] -> y [..., K] = (x - center) @ encoder_weight.T + encoder_bias, before the nonlinearity."""
        if x.shape[-1] != self.n_channels:
            raise ValueError(f"{self.layer} basis reads vectors of {self.n_channels}, got {tuple(x.shape)}")
        return (x - self._on(x, "center")) @ self._on(x, "encoder_weight").T + self._on(x, "encoder_bias")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [..., C] -> (response [..., K], pre [..., K] or None). Differentiable in x."""
        pre = self.affine(x)
        if self.encoder == "linear":
            return pre, None
        response = torch.relu(pre)
        if self.encoder == "topk":
            kept = torch.topk(response, self.top_k, dim=-1)
            response = torch.zeros_like(response).scatter(-1, kept.indices, kept.values)
        return response, pre

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """response [..., K] -> x_hat [..., C]."""
        if self.decode_top1:
            best = z.argmax(dim=-1, keepdim=True)
            z = torch.zeros_like(z).scatter(-1, best, z.gather(-1, best))
        return z @ self._on(z, "directions") + self._on(z, "center")

    # -------------------------------------------------------------- storing

    def meta(self) -> dict:
        """What the basis is, besides its tensors (JSON-able; the hash covers it)."""
        return {
            "kind": self.kind, "layer": self.layer, "size": self.size, "n_channels": self.n_channels,
            "encoder": self.encoder, "top_k": self.top_k, "decode_top1": self.decode_top1,
            "signed": self.signed, "settings": self.settings,
        }  # fmt: skip

    def state_dict(self) -> dict:
        """{"tensors": {name: float32 tensor}, "meta": JSON-able dict, "name": str}: all a store needs."""
        return {"tensors": {name: getattr(self, name) for name in TENSORS}, "meta": self.meta(),
                "name": self.name}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict) -> Basis:
        meta, tensors = state["meta"], state["tensors"]
        missing = [name for name in TENSORS if name not in tensors]
        if missing:
            raise ValueError(f"a stored basis without tensor(s) {missing}")
        basis = cls(
            kind=meta["kind"], layer=meta["layer"], encoder=meta["encoder"], top_k=meta.get("top_k"),
            decode_top1=bool(meta.get("decode_top1")), name=state.get("name", ""),
            settings=dict(meta.get("settings") or {}),
            **{name: torch.as_tensor(np.array(tensors[name], dtype=np.float32)) for name in TENSORS},  # copies
        )  # fmt: skip
        if (basis.size, basis.n_channels) != (meta["size"], meta["n_channels"]):
            raise ValueError(f"a stored basis of {meta['size']} x {meta['n_channels']} holds other shapes")
        return basis

    def content_hash(self) -> str:
        """SHA-256 (hex) of the canonical bytes: sorted-key JSON of `meta`, then each tensor in name order."""
        digest = hashlib.sha256(json.dumps(self.meta(), sort_keys=True, separators=(",", ":")).encode())
        for name in sorted(TENSORS):
            array = getattr(self, name).numpy().astype("<f4", copy=False)
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()


def topk_margin(pre: torch.Tensor, top_k: int) -> torch.Tensor:
    """[..., K] -> [..., K]: min(y_j, y_j - t_j), t_j the top_k-th largest of the *other* directions' y at the
    position. It is > 0 exactly where a topk encoder keeps y_j (ties apart), and climbing it raises y_j and
    lowers the competitor at the threshold: the hybrid own term of a silent topk direction."""
    if top_k >= pre.shape[-1]:
        return pre  # every positive y is kept: no competition
    values = torch.topk(pre, top_k + 1, dim=-1).values
    kth, next_ = values[..., top_k - 1 : top_k], values[..., top_k:]
    # In the top k itself, the others' k-th largest is the (k + 1)-th of all; outside it, the k-th.
    return torch.minimum(pre, pre - torch.where(pre >= kth, next_, kth))


def orient_signs(responses: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per direction: the sign that makes a direction's largest responses on the data positive.

    The rule: the sign of the third moment of its responses on the fit sample, sum(r**3) (the heavier tail
    becomes the positive one; 0 keeps the direction as it is). responses [N, K] -> signs [K] float32."""
    third = responses.to(torch.float64).pow(3).sum(dim=0)
    return torch.where(third < 0, -1.0, 1.0).to(torch.float32)
