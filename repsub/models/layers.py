"""A layer of units: which module's output holds them, how that output maps to units, how it is read."""

from __future__ import annotations

from dataclasses import dataclass

READS = {
    "relu": "after ReLU",
    "block": "block output (after its final ReLU)",
    "logits": "logits",
    "module": "raw module output",
}

# How a module's output maps to units (repsub.capture.reader.reduce_units implements each reduction).
KINDS = {
    "conv": "[B, C, H, W]: a unit per channel, its map reduced over space (--reduce)",
    "nhwc": "[B, H, W, C]: a unit per channel (last dimension), reduced over space (--reduce)",
    "linear": "[B, N]: a unit per neuron",
    "tokens": "[B, T, D]: a unit per feature, reduced over the T tokens (mean or max; center is refused)",
}


@dataclass(frozen=True)
class UnitLayer:
    """One layer of units: its stable name, unit count and the module whose output is read."""

    name: str
    n_units: int
    module: str  # dotted path of the module whose output holds the layer's units
    kind: str  # how the output maps to units: a key of KINDS
    read: str  # how the layer is read: a key of READS
    # The ReLU module whose input, on its last call within `module`'s forward, is the layer's
    # pre-activation; None when the value read is not a ReLU output (logits, raw module output).
    relu: str | None = None
    # The module's calls in one forward: a module called several times (a ResNet block's ReLU) is read
    # at its last call, once the forward has made them all.
    calls: int = 1
    # Forward position: completion index of the module's last call in the probing forward (sort key).
    order: int = 0

    @property
    def after_relu(self) -> bool:
        return self.relu is not None

    def record(self, depth: int) -> dict:
        """What a run's manifest keeps about the layer, so reports read the truth, never a guess."""
        return {"name": self.name, "units": self.n_units, "module": self.module, "kind": self.kind,
                "read": self.read, "depth": depth}  # fmt: skip

    def describe_read(self) -> str:
        text = READS[self.read]
        return f"{text}, last of {self.calls} calls" if self.calls > 1 else text
