"""The registered models and their default catalogs, shipped as JSON, so that `repsub layers --model NAME` and
`repsub layers --list-models` answer without importing torch and torchvision (several seconds here).

The index is built from the live catalogs (a meta-device forward per model) with the versions of torch and
torchvision it records; where the installed ones differ, or for anything it does not hold (other weights,
`--modules`), `repsub layers` builds the catalog live. Regenerate it after changing a model or a catalog
rule (tests/test_torchvision_models.py checks that it equals the live catalogs):

    .venv/bin/python -m repsub.models.catalog_index
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

INDEX = Path(__file__).with_name("catalog_index.json")


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("torch", "torchvision")}


def load() -> dict | None:
    """The shipped index, or None where it is missing or was built with other torch/torchvision versions."""
    try:
        index = json.loads(INDEX.read_text())
    except (OSError, ValueError):
        return None
    return index if index.get("versions") == _versions() else None


def layer_rows(layers) -> list[dict]:
    """What `repsub layers` shows of each layer."""
    return [
        {"name": layer.name, "units": layer.n_units, "module": layer.module, "kind": layer.kind,
         "read": layer.read, "read_text": layer.describe_read()}
        for layer in layers
    ]  # fmt: skip


def model_rows() -> list[dict]:
    """What `repsub layers --list-models` shows of each registered model."""
    from repsub.models import MODELS
    from repsub.models.weights import weights_names

    return [
        {"name": spec.name, "family": spec.family, "image_size": spec.preprocessing.image_size,
         "classes": spec.num_classes, "description": spec.description,
         "weights": ["random", *(["imagenet", *weights_names(spec.weights_enum)] if spec.weights_enum else [])]}
        for spec in MODELS.values()
    ]  # fmt: skip


def build() -> dict:
    from repsub.models import MODELS, model_catalog

    return {
        "versions": _versions(),
        "models": model_rows(),
        "catalogs": {name: layer_rows(model_catalog(name).layers) for name in MODELS},
    }


def main() -> None:
    INDEX.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {INDEX}")


if __name__ == "__main__":
    main()
