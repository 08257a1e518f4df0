"""repsub: class selectivity, AM/IAM and Representative Substitution for every unit of a vision network.

Method: "Understanding the Importance of Single Directions via Representative Substitution"
(arXiv 1811.11053); class selectivity after Morcos et al. (2018).
"""

__version__ = "0.1.0"

import importlib as _importlib
import sys as _sys
import types as _types

# The API, imported on first use: `import repsub` (and the command line's start) stays free of torch, which
# costs seconds to import. name -> the module that defines it.
_API = {
    "selectivity": "api",
    "visualize": "api",
    "importance": "api",
    "catalog": "models",
    "load_model": "models",
    "open_run": "run",
    "Run": "run",
}
__all__ = [
    "Run",
    "__version__",
    "catalog",
    "importance",
    "load_model",
    "open_run",
    "selectivity",
    "visualize",
]


def _api(name: str):
    value = getattr(_importlib.import_module(f".{_API[name]}", __name__), name)
    if name not in _SUBMODULE_NAMES:
        globals()[name] = value
    return value


def __getattr__(name: str):
    if name in _API:
        return _api(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API})


# `repsub.selectivity` and `repsub.importance` are API functions although submodules have the same names, and
# importing a submodule sets the package's attribute of its name. These two stay the functions (as when they
# were imported eagerly here); the submodules remain importable (`from repsub.selectivity import ...`).
_SUBMODULE_NAMES = ("selectivity", "importance")


class _Package(_types.ModuleType):
    selectivity = property(lambda self: _api("selectivity"), lambda self, module: None)
    importance = property(lambda self: _api("importance"), lambda self, module: None)


_sys.modules[__name__].__class__ = _Package
