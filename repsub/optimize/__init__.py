"""Activation maximization (AM) and inter-unit AM (IAM), one image per unit, optimized in batches.

Lucid's split: ``objectives`` (what to maximize), ``param`` (how an image is parameterized),
``transforms`` (random robustness transforms), ``render`` (the optimization loop), plus
``progress`` (one bar across layers) and ``settings`` (the settings, declared once; light).
"""

# Names resolved on first use, so that importing the light `settings` module (the command line does) does not
# import torch.
_EXPORTS = {
    "METHODS": "objectives",
    "OWN_TERMS": "settings",
    "PARAMETERIZATIONS": "param",
    "UnitProgress": "progress",
    "OptimResult": "render",
    "OptimSettings": "settings",
    "optimize_units": "render",
    "unit_seed": "render",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
