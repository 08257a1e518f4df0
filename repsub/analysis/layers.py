"""The layers of a run: names, depth, unit counts and how each layer is read, from the run's manifest.

`manifest["catalog"]` (written by every command since units schema version 2) is the truth. Older runs
lack it: only for them is the model registry asked, and a model it does not know leaves the layers in the
order the tables list them, without depth.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a layer is read (repsub.models.READS) -> whether its values are post-ReLU (selectivity in [0, 1]).
BOUNDED_READS = {"relu", "block"}
SIGNED_NOTE = "signed values (no ReLU): selectivity unbounded"


@dataclass(frozen=True)
class LayerInfo:
    name: str
    depth: int | None  # position in the model's catalog (0 = first unit layer); None if not in it
    read: str | None  # "relu", "block", "logits" or "module"; None if unknown
    n_units: int | None  # units in the catalog
    kind: str | None = None  # "conv" or "linear"

    @property
    def signed(self) -> bool:
        """Read where values can be negative (logits, a raw module output): selectivity is unbounded."""
        return self.read is not None and self.read not in BOUNDED_READS


def catalog_layers(manifest: dict) -> tuple[list[LayerInfo], str]:
    """The model's layers in depth order, and where they came from ('manifest', 'model registry' or 'none')."""
    records = manifest.get("catalog")
    if records:
        layers = [
            LayerInfo(r["name"], r.get("depth", i), r.get("read"), r.get("units"), r.get("kind"))
            for i, r in enumerate(records)
        ]
        return sorted(layers, key=lambda info: info.depth), "manifest"
    return _registry_layers(manifest.get("model") or {})


def _registry_layers(identity: dict) -> tuple[list[LayerInfo], str]:
    """Fallback for runs written before the manifest kept the catalog."""
    name = identity.get("model")
    if not name:
        return [], "none"
    from repsub.errors import RepsubError
    from repsub.models import catalog  # only here: the analysis never depends on the registry otherwise

    try:
        layers = catalog(name, identity.get("num_classes"))
    except (RepsubError, RuntimeError, KeyError, ValueError):  # a model this repsub does not know
        return [], "none"
    found = []
    for depth, layer in enumerate(layers):
        read = getattr(layer, "read", None) or ("relu" if getattr(layer, "after_relu", False) else "logits")
        found.append(LayerInfo(layer.name, depth, read, layer.n_units, getattr(layer, "kind", None)))
    return found, "model registry"


def run_layers(catalog: list[LayerInfo], present: list[str]) -> list[LayerInfo]:
    """The layers that have rows, in catalog order, then those the catalog lacks (no depth) in table order."""
    known = {info.name for info in catalog}
    wanted = set(present)
    return [info for info in catalog if info.name in wanted] + [
        LayerInfo(name, None, None, None) for name in present if name not in known
    ]


def class_names(manifest: dict) -> list[str] | None:
    """The class names of the selectivity data, in class-index order, if the manifest records them."""
    commands = manifest.get("commands") or {}
    for key in ("selectivity", "sweep"):
        config = (commands.get(key) or {}).get("config") or {}
        names = (config.get("data") or {}).get("classes") if isinstance(config.get("data"), dict) else None
        names = names or config.get("classes")
        if names:
            return [str(n) for n in names]
    return None
