"""Models: the registry, the unit catalog, weights and loading.

- `layers`: UnitLayer (a layer of units: the module whose output holds them, its kind, how it is read).
- `probe`: one meta-device forward that tells every module's output shape, calls, order and ReLU.
- `catalog`: the catalog rules of each family, and Catalog (default layers + any module by name).
- `weights`: what `--weights` names, the preprocessing that belongs to it, the content hash.
- `registry`: ModelSpec, register_model, get_spec.
- `paper`, `zoo`: the paper's shallow CNN and MLP; every torchvision classification model.
- `loading`: LoadedModel, load_model (by name), from_module (any nn.Module), resolve_model (either).
"""

from . import paper, zoo  # noqa: F401  (registration)
from .catalog import Catalog
from .layers import KINDS, READS, UnitLayer
from .loading import (
    LoadedModel,
    catalog,
    catalog_of,
    classifier_key,
    from_module,
    load_model,
    meta_build,
    model_catalog,
    resolve_model,
    select_layers,
)
from .paper import MLP, ShallowCNN
from .registry import MODELS, ModelSpec, get_spec, model_names, register_model
from .weights import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, parse_weights, state_dict_sha256

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "KINDS", "MLP", "MODELS", "READS", "Catalog", "LoadedModel", "ModelSpec",
    "Preprocessing", "ShallowCNN", "UnitLayer", "catalog", "catalog_of", "classifier_key", "from_module",
    "get_spec",
    "load_model", "meta_build", "model_catalog", "model_names", "parse_weights", "register_model",
    "resolve_model", "select_layers", "state_dict_sha256",
]  # fmt: skip
