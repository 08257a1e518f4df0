"""The manifest of a run (`RUN/manifest.json`): its constants, the description of the run every writer records
(library and code versions, the model's identity), and the rule that tells two models apart."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from repsub import __version__
from repsub.errors import RunError, shown

SCHEMA_VERSION = 3
# Version 1 runs (no per-unit status, rs_ties or objectives) are still read; their status is derived
# (repsub.runstore.tables.units_status) but nothing is written into them. Version 2 runs (no `basis` column:
# every row a unit's) are read with basis "unit", and upgraded in place by the first command that writes into
# them: their rows already mean what version 3's unit rows mean.
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
UPGRADABLE_SCHEMA_VERSIONS = (2,)
MANIFEST = "manifest.json"


def code_version() -> str:
    """The git commit of the repsub checkout (with '+dirty' for local changes), or the package version."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"repsub {__version__}"


def library_versions() -> dict[str, str]:
    import scipy
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "repsub": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "scipy": scipy.__version__,
    }


# The manifest's fields that readers and writers use, and the JSON type each must have: a field of another type
# (hand-edited, another tool's file) is refused, named, instead of failing deep inside a reader.
FIELD_TYPES = {"schema_version": int, "model": dict, "catalog": list, "commands": dict, "invariants": dict,
               "next_seq": int, "bases": dict}  # fmt: skip
JSON_NAMES = {int: "a number", dict: "an object", list: "an array"}


def check_fields(manifest: dict, where: str) -> dict:
    """`manifest`, if each known field has its JSON type (null counts as absent); else a RunError naming the
    field, what it holds and the file."""

    def refuse(field: str, value, expected: str) -> RunError:
        return RunError(
            f"{where}: {MANIFEST} field {field!r} holds {json_kind(value)} {shown(value, 40)}, not "
            f"{expected}: repair the file, or write to another output location"
        )

    for field, kind in FIELD_TYPES.items():
        value = manifest.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise refuse(field, value, JSON_NAMES[kind])
    for entry in manifest.get("catalog") or []:
        if not isinstance(entry, dict):
            raise refuse("catalog", entry, "an array of objects (one per layer)")
    for name, entry in (manifest.get("commands") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("invocations") or [], list):
            raise refuse(f"commands.{name}", entry, "an object with an array of invocations")
    return manifest


IDENTITY_KEYS = {"model": "architecture", "weights_sha256": "weights", "num_classes": "classes"}


def model_mismatch(recorded: dict, current: dict) -> str | None:
    """In words, how this command's model differs from the run's, or None when it is the same model: the same
    architecture, weights (by content hash, wherever the file lies) and class count."""
    differs = [key for key in IDENTITY_KEYS if recorded.get(key) != current.get(key)]
    if not differs:
        return None

    def described(identity: dict) -> str:
        sha = str(identity.get("weights_sha256") or "?")[:12]
        return (
            f"{identity.get('model', '?')} with weights {identity.get('weights', '?')!r} (sha256 {sha}…), "
            f"{identity.get('num_classes', '?')} classes"
        )

    hint = ""
    if differs == ["weights_sha256"] and recorded.get("weights") != current.get("weights"):
        hint = f" (the run was made with --weights {recorded.get('weights')})"
    return (
        f"the run's model is {described(recorded)}; this command's is {described(current)}. They differ in "
        f"{' and '.join(IDENTITY_KEYS[key] for key in differs)}: not mixing them. Use the run's model and "
        f"weights{hint}, or another output location"
    )


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def json_kind(value) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             dict: "an object"}  # fmt: skip
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def encode_manifest(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
