"""Shared fixtures: small generated data and models built once per session."""

from __future__ import annotations

# Imported before anything loads numba (FFCV): hypothesis's pytest plugin imports it at the end of the run, and
# pytest's assertion rewriting then parses its source while numba's finalizers may run, which CPython 3.11.7
# turns into "SystemError: AST constructor recursion depth mismatch" (an INTERNALERROR).
import os

import hypothesis  # noqa: F401
import pytest

# Precision auto on a CPU with fast-bf16 flags times a probe per process; on a busy machine two processes (a test
# and the sweep workers it starts) may then choose differently, and results compared with a float32 forward
# differ. The suite fixes the measurement (inherited by every process it starts); tests of the choice set it.
os.environ.setdefault("REPSUB_CPU_BF16_SPEEDUP", "1.0")

from repsub.data.synthetic import make_image_folder
from repsub.models import load_model


@pytest.fixture(scope="session")
def image_folder_dir(tmp_path_factory):
    """A 3-class ImageFolder of 36 px PNGs, 7 images per class (21: not a multiple of common batch sizes)."""
    return make_image_folder(
        tmp_path_factory.mktemp("data") / "images", num_classes=3, images_per_class=7, size=36
    )


@pytest.fixture(scope="session")
def vgg16_random():
    return load_model("vgg16", weights="random", seed=0)


@pytest.fixture(scope="session")
def shallow_random():
    return load_model("shallow_cnn", weights="random", seed=0, num_classes=3)
