"""repsub: class selectivity, AM/IAM and Representative Substitution for every unit of a vision network.

Method: "Understanding the Importance of Single Directions via Representative Substitution"
(arXiv 1811.11053); class selectivity after Morcos et al. (2018).
"""

__version__ = "0.1.0"

from .api import importance, selectivity, visualize  # noqa: E402
from .models import catalog, load_model  # noqa: E402
from .run import Run, open_run  # noqa: E402

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
