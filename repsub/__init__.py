"""repsub: class selectivity, AM/IAM and Representative Substitution for every unit of a vision network.

Method: "Understanding the Importance of Single Directions via Representative Substitution"
(arXiv 1811.11053); class selectivity after Morcos et al. (2018).
"""

__version__ = "0.1.0"

import importlib as _importlib

# The API, imported on first use: `import repsub` (and the command line's start) stays free of torch, which
# costs seconds to import. name -> the module that defines it.
_API = {
    "selectivity": "repsub.commands.selectivity",
    "visualize": "repsub.commands.visualize",
    "importance": "repsub.commands.importance",
    "fit_basis": "repsub.commands.basis",
    "list_bases": "repsub.commands.basis",
    "load_basis": "repsub.commands.basis",
    "catalog": "repsub.models",
    "load_model": "repsub.models",
    "open_run": "repsub.analysis.run",
    "Run": "repsub.analysis.run",
}
__all__ = [
    "Run",
    "__version__",
    "catalog",
    "fit_basis",
    "importance",
    "list_bases",
    "load_basis",
    "load_model",
    "open_run",
    "selectivity",
    "visualize",
]


def __getattr__(name: str):
    if name in _API:
        value = getattr(_importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API})
