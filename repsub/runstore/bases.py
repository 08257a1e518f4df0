"""A run's bases (issue 18): one Parquet file per basis, its row of the `bases` table, and the manifest's record.

    RUN/bases/layer=<layer>/<name>.parquet     one row: what the basis is, its fit, its metrics, its tensors
    manifest["bases"]["<layer>/<name>"]        {"kind", "size", "n_channels", "hash", "file", ...}

The tensors (directions, encoder weight and bias, centre) travel as an `.npz` in the row's `state` column, read
back with `allow_pickle=False`: a stored basis never builds Python objects. The manifest records each basis's
content hash; a reader checks the file against it and against the run's model. Nothing here needs torch:
repsub.core.bases.Basis.from_state builds the basis from `read_basis`'s state.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow as pa

from repsub.errors import RunError, UsageError, shown
from repsub.runstore.manifest import model_mismatch
from repsub.runstore.tables import BASES

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
UNIT = "unit"  # the identity basis: every run has it, nothing is stored


def check_basis_name(name: str) -> str:
    """A basis name is a file name within the run: letters, digits, '_', '.', '-' (64 at most)."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (UNIT, ".", ".."):
        raise UsageError(
            f"basis name {shown(name)}: use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit (and not {UNIT!r}, the identity basis every run has)"
        )
    return name


def encode_tensors(tensors: dict) -> bytes:
    """Named float32 arrays as `.npz` bytes (numpy's format: plain arrays, no pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()})
    return buffer.getvalue()


def decode_tensors(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def basis_row(state: dict, content_hash: str, model: dict, fit: dict, metrics: dict) -> pa.Table:
    """The `bases` row of a basis: `state` is Basis.state_dict(), `model` the run's model identity, `fit` how its
    vectors were sampled, `metrics` repsub.core.bases.metrics.basis_metrics."""
    meta = state["meta"]
    row = {
        "name": state["name"], "kind": meta["kind"], "size": meta["size"], "n_channels": meta["n_channels"],
        "signed": meta["signed"], "encoder": meta["encoder"], "hash": content_hash,
        "meta": json.dumps(meta, sort_keys=True), "fit": json.dumps(fit, sort_keys=True, default=str),
        "model": json.dumps(model, sort_keys=True, default=str),
        **{key: metrics.get(key) for key in ("fve", "mean_l0", "dead", "stability", "n_held_out")},
        "n_fit": fit.get("n_fit"), "state": encode_tensors(state["tensors"]),
    }  # fmt: skip
    return pa.Table.from_pylist([row], schema=BASES.schema.remove(BASES.schema.get_field_index("command")))


def write_basis(writer, layer: str, name: str, row: pa.Table) -> str:
    """Write one basis's file (a new file, committed to the run's snapshot: repsub.runstore.writer), its row
    getting the session's command; returns its path relative to the run."""
    row = row.append_column("command", pa.array([writer.command], pa.string()))
    path = writer.write_named_file(BASES.name, layer, name, row)  # a new file; readers keep their snapshot
    writer.written.setdefault(f"{BASES.name}/{name}", set()).add(layer)
    return path


def manifest_entry(row: pa.Table, layer: str, file: str, fitted_at: str) -> dict:
    """What the manifest records of a basis; `file`: its path relative to the run (write_basis)."""
    values = row.select(["kind", "size", "n_channels", "signed", "hash"]).to_pylist()[0]
    return {**values, "layer": layer, "file": file, "fitted_at": fitted_at}


def recorded_bases(manifest: dict | None) -> dict[str, dict]:
    """The manifest's bases: {"<layer>/<name>": entry}."""
    return dict((manifest or {}).get("bases") or {})


REFIT_REMEDY = (
    "give it another --name, or --replace to refit it (the rows measured with the old fit are removed with it: "
    "measure them again)"
)


def refuse_refit(
    manifest: dict | None, layer: str, name: str, new_hash: str, replace: bool, remedy: str = REFIT_REMEDY
) -> bool:
    """A name already holding another fit on the layer is kept unless `replace`: rows measured with one fit of a
    basis name must never sit beside rows of another. `remedy`: what the refusal advises (the command's flags by
    default). Returns whether the fit replaces another."""
    entry = recorded_bases(manifest).get(f"{layer}/{name}")
    differs = bool(entry) and entry.get("hash") != new_hash
    if differs and not replace:
        raise RunError(
            f"basis {name!r} of {layer} exists in this run ({entry.get('kind')}, hash {entry.get('hash', '')[:12]}); "
            f"this fit differs: {remedy}"
        )
    return differs


def read_basis(location, manifest: dict, layer: str, name: str, model: dict | None = None) -> dict:
    """The stored state of basis `name` of `layer` ({"tensors", "meta", "name"}, for Basis.from_state), checked:
    a name the run does not hold is refused with the run's bases listed; a file whose content is not the one
    the manifest records, or a basis fitted on another model than `model` (an identity), is refused."""
    bases = recorded_bases(manifest)
    entry = bases.get(f"{layer}/{name}")
    if entry is None:
        listed = ", ".join(sorted(bases)) or "none"
        raise UsageError(
            f"basis {shown(name)} of layer {shown(layer)} does not exist in {location.uri}; its bases (layer/name): "
            f"{listed} (and {UNIT}, the identity, on every layer). Fit one: repsub basis fit"
        )
    table = location._read_parquet(location._path(entry["file"]))
    row = table.to_pylist()[0]
    if row["hash"] != entry["hash"]:
        raise RunError(
            f"{location.uri}: {entry['file']} holds basis hash {row['hash'][:12]}, the manifest records "
            f"{entry['hash'][:12]}: the file was replaced outside repsub; fit the basis again"
        )
    if model is not None:
        mismatch = model_mismatch(json.loads(row["model"]), model)
        if mismatch:
            raise RunError(
                f"basis {name!r} of {layer} was fitted on another model ({mismatch.replace('the run', 'the basis')})"
            )
    return row_state(row)


def row_state(row: dict) -> dict:
    """A `bases` row (as a dict) as the state Basis.from_state builds the basis from."""
    return {"tensors": decode_tensors(row["state"]), "meta": json.loads(row["meta"]), "name": row["name"],
            "hash": row["hash"], "fit": json.loads(row["fit"])}  # fmt: skip
