"""Models: the registry, the unit catalog, weights and loading.

- `layers`: UnitLayer (a layer of units: the module whose output holds them, its kind, how it is read).
- `probe`: one meta-device forward that tells every module's output shape, calls, order and ReLU.
- `catalogs`: the catalog rules of each family, and Catalog (default layers + any module by name).
- `weights`: what `--weights` names, the preprocessing that belongs to it, the content hash.
- `registry`: ModelSpec, register_model, get_spec.
- `paper`, `zoo`: the paper's shallow CNN and MLP; every torchvision classification model.
- `catalog_index`: the registered models' catalogs shipped as JSON (`repsub layers` without torch).
- `loading`: LoadedModel, load_model (by name), from_module (any nn.Module), resolve_model (either).
"""

from repsub.lazy import lazy_exports

# Resolved on first use, so that `repsub layers` can read the shipped catalog index (repsub.models.catalog_index)
# without importing torch. name -> the submodule that defines it.
_EXPORTS = {
    "Catalog": "catalogs",
    "KINDS": "layers", "READS": "layers", "UnitLayer": "layers",
    "LoadedModel": "loading", "catalog": "loading", "catalog_of": "loading", "check_image_size": "loading",
    "classifier_key": "loading", "from_module": "loading", "load_model": "loading", "meta_build": "loading",
    "model_catalog": "loading", "resolve_model": "loading", "select_layers": "loading",
    "MLP": "paper", "ShallowCNN": "paper",
    "MODELS": "registry", "ModelSpec": "registry", "get_spec": "registry", "model_names": "registry",
    "register_model": "registry",
    "IMAGENET_MEAN": "weights", "IMAGENET_STD": "weights", "Preprocessing": "weights", "parse_weights": "weights",
    "state_dict_sha256": "weights",
}  # fmt: skip
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS, first=("loading",))
