"""Readouts: how a layer's activation vector at one position becomes the responses of K targets.

A **target** is what a row describes: a unit, or a direction of a **basis** fitted to one layer. A readout
maps the layer's C values at one position (a conv layer's channels at (h, w), a linear layer's neurons, a
token's features) to K responses; a target's activation on an image is its response at every position,
reduced over space as units are. `UnitReadout` is the identity (K = C): units are the basis "unit", and
every number recorded for them is what it was before bases existed.

Any object with the attributes and methods of `Readout` is measured the same way (the fitted bases of
`repsub basis fit` are such objects). `encode` must be differentiable where AM climbs it, and return, for a
nonlinear encoder, the response before its nonlinearity (`pre`: the hybrid own term climbs it while the
response is 0); a linear encoder returns None there and its pre-activation is the readout of the layer's
pre-ReLU values (repsub.capture.reader). `decode` maps responses back to the layer (ablation).
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol, runtime_checkable

import torch

from repsub.errors import UsageError

UNIT = "unit"  # the identity basis: a target per unit
BASIS_NAME = re.compile(r"[A-Za-z0-9_]+")  # block file names join a key and a basis name with '@'


@runtime_checkable
class Readout(Protocol):
    """A basis as repsub measures it (the protocol `repsub basis fit`'s bases follow)."""

    name: str  # the basis name rows carry in their `basis` column
    layer: str | None  # the layer it was fitted to (None: any layer with C units)
    K: int  # directions
    C: int  # the layer's values per position

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [..., C] -> (response [..., K], pre [..., K] or None for a linear encoder)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., K] -> x_hat [..., C]."""
        ...

    def content_hash(self) -> str:
        """A digest of what defines the responses: two fits of one name differ in it."""
        ...


def check_basis_name(name: str) -> str:
    if not isinstance(name, str) or not BASIS_NAME.fullmatch(name):
        raise UsageError(
            f"basis name {name!r}: letters, digits and underscores only (it names the basis's files)"
        )
    return name


class UnitReadout:
    """The identity basis: direction k is unit k."""

    kind = UNIT
    signed = False

    def __init__(self, n_units: int, layer: str | None = None):
        self.name, self.layer, self.K, self.C = UNIT, layer, n_units, n_units

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def content_hash(self) -> str:
        return UNIT


class LinearReadout:
    """response = x @ directions.T + bias: a linear basis from rows of the layer's space (users' own vectors,
    tests). `decode` is the least-squares inverse (the transpose for orthonormal rows)."""

    kind = "vectors"

    def __init__(self, directions: torch.Tensor, bias: torch.Tensor | None = None, *, name: str = "vectors",
                 layer: str | None = None, signed: bool = True):  # fmt: skip
        directions = torch.as_tensor(directions, dtype=torch.float32)
        if directions.dim() != 2:
            raise ValueError(f"directions must be [K, C], got {tuple(directions.shape)}")
        self.directions = directions.contiguous()
        self.bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
        if self.bias is not None and self.bias.numel() != directions.shape[0]:
            raise ValueError(f"bias has {self.bias.numel()} values for {directions.shape[0]} directions")
        self.name, self.layer, self.signed = check_basis_name(name), layer, signed
        self.K, self.C = directions.shape
        gram = self.directions.double() @ self.directions.double().T
        orthonormal = torch.allclose(gram, torch.eye(self.K, dtype=torch.float64), atol=1e-6)
        # Orthonormal rows: decode is the transpose itself (exact for a permutation), else the pseudo-inverse.
        self._inverse = (
            self.directions.T if orthonormal else torch.linalg.pinv(self.directions.double()).float()
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        weight = self.directions.to(x.device, x.dtype)
        z = x @ weight.T
        return (z if self.bias is None else z + self.bias.to(x.device, x.dtype)), None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            z = z - self.bias.to(z.device, z.dtype)
        return z @ self._inverse.to(z.device, z.dtype).T

    def content_hash(self) -> str:
        digest = hashlib.sha256(self.directions.numpy().tobytes())
        if self.bias is not None:
            digest.update(self.bias.numpy().tobytes())
        return digest.hexdigest()[:16]

    def oriented(self, x: torch.Tensor) -> LinearReadout:
        """The same basis with each direction's sign chosen so that its largest response on `x` [..., C] (by
        magnitude) is positive: a flipped direction then reads like the one it flips."""
        z = self.encode(x.reshape(-1, self.C).float())[0]
        extreme = z.gather(0, z.abs().argmax(0, keepdim=True)).squeeze(0)
        signs = torch.where(extreme < 0, -1.0, 1.0)
        bias = None if self.bias is None else self.bias * signs
        return LinearReadout(self.directions * signs[:, None], bias, name=self.name, layer=self.layer,
                             signed=self.signed)  # fmt: skip


class StackedReadout:
    """Several readouts of one layer as one: their responses side by side (K = the sum), so that one
    selectivity pass, one encode per batch and one class-sum accumulator serve them all; `slices` splits
    the responses back per part."""

    kind = "stacked"

    def __init__(self, parts: list):
        if not parts or len({part.C for part in parts}) != 1:
            raise ValueError("a stacked readout needs parts of one layer (one C)")
        if len({part.name for part in parts}) != len(parts):
            raise ValueError(f"two parts of one name in {[part.name for part in parts]}")
        self.parts = list(parts)
        self.name = "+".join(part.name for part in parts)
        self.layer = parts[0].layer
        self.C = parts[0].C
        self.K = sum(part.K for part in parts)
        bounds = torch.tensor([0, *(part.K for part in parts)]).cumsum(0).tolist()
        self.slices = {part.name: slice(a, b) for part, a, b in zip(parts, bounds, bounds[1:], strict=False)}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.cat([part.encode(x)[0] for part in self.parts], dim=-1), None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("a stacked readout is read, never ablated: ablate its parts")

    def content_hash(self) -> str:
        return hashlib.sha256("+".join(p.content_hash() for p in self.parts).encode()).hexdigest()[:16]


def encode_with_pre(readout, x: torch.Tensor, x_pre: torch.Tensor | None):
    """(response, pre) of `readout` on the layer's values x [..., C], where `x_pre` [..., C] (or None) holds
    the layer's pre-ReLU values: the readout's own pre-activation where it gives one, else (a linear readout)
    the readout of x_pre; None where neither exists. A stacked readout's parts each follow the rule."""
    parts = getattr(readout, "parts", None)
    if parts is not None:
        pairs = [encode_with_pre(part, x, x_pre) for part in parts]
        if any(pre is None for _, pre in pairs):
            return torch.cat([z for z, _ in pairs], dim=-1), None
        return torch.cat([z for z, _ in pairs], dim=-1), torch.cat([pre for _, pre in pairs], dim=-1)
    response, pre = readout.encode(x)
    if pre is None and x_pre is not None:
        pre = readout.encode(x_pre)[0]
    return response, pre


def is_affine(readout) -> bool:
    """Whether `readout`'s responses are an affine map of the layer's values (no nonlinearity): then the mean
    (or the centre) over positions of the responses is the readout of the mean (or centre) of the values, and
    a reduced read can encode once per image instead of once per position."""
    parts = getattr(readout, "parts", None)
    if parts is not None:
        return all(is_affine(part) for part in parts)
    return isinstance(readout, UnitReadout | LinearReadout) or getattr(readout, "encoder", None) == "linear"


def is_units(readout) -> bool:
    """Whether `readout` is the unit basis (None included): the path units always took."""
    return readout is None or isinstance(readout, UnitReadout)


def check_readout(readout, layer_name: str, n_units: int) -> None:
    """`readout` reads a layer of `n_units` values per position (and, when it names one, this layer)."""
    if n_units != readout.C:
        raise UsageError(
            f"basis {readout.name!r} reads {readout.C} values per position; layer {layer_name} has {n_units}"
        )
    fitted = getattr(readout, "layer", None)
    if fitted is not None and fitted != layer_name:
        raise UsageError(f"basis {readout.name!r} was fitted to layer {fitted}, not {layer_name}")
