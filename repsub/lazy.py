"""Names of a package resolved on first use (PEP 562), so that importing a light part of repsub (the command
line's parser, the catalog index, a run's reader) does not import torch, pyarrow or Ray, which cost seconds."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str], first: tuple[str, ...] = ()
) -> Callable[[str], object]:
    """The `__getattr__` of `package`: `exports` maps a name to the submodule (relative to `package`) that
    defines it; `first` names submodules imported before any of them (e.g. ones that register models)."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        for module in first:
            importlib.import_module(f"{package}.{module}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)  # resolved once
        return value

    return __getattr__
