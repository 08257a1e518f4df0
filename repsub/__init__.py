"""repsub: class selectivity, AM/IAM and Representative Substitution for every unit of a vision network.

Method: "Understanding the Importance of Single Directions via Representative Substitution"
(arXiv 1811.11053); class selectivity after Morcos et al. (2018).
"""

__version__ = "0.1.0"

from repsub.lazy import lazy_exports

# The API, imported on first use: `import repsub` (and the command line's start) stays free of torch, which
# costs seconds to import. name -> the module that defines it.
_API = {
    "selectivity": "commands.selectivity",
    "visualize": "commands.visualize",
    "importance": "commands.importance",
    "interpretability": "commands.interpretability",
    "catalog": "models",
    "load_model": "models",
    "open_run": "analysis.run",
    "Run": "analysis.run",
    "fit_basis": "commands.basis",
    "list_bases": "commands.basis",
    "load_basis": "commands.basis",
}
__all__ = [
    "Run",
    "__version__",
    "catalog",
    "fit_basis",
    "importance",
    "interpretability",
    "list_bases",
    "load_basis",
    "load_model",
    "open_run",
    "selectivity",
    "visualize",
]


__getattr__ = lazy_exports(__name__, _API)


def __dir__():
    return sorted({*globals(), *_API})
