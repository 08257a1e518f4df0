"""Runs for the analysis tests (report, page, notebook access) and an independent reading of their columns.

The independent side reads the Parquet files one by one with pyarrow.parquet and applies the documented
rules in plain Python loops (duplicates: newest file wins; exclusion: first reason in the documented
order), so the tests compare repsub's vectorized code with a second implementation written from the docs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from repsub.runstore.tables import png_bytes
from repsub.runstore.writer import RunWriter
from tests.run_helpers import record_command

IDENTITY = {"model": "shallow_cnn", "weights": "random", "weights_sha256": "0" * 64, "num_classes": 3}
REASON_ORDER = ["dead", "no_response", "nonfinite", "no_selectivity", "nan_selectivity"]


# ---------------------------------------------------------------- runs


def real_run(tmp_path_factory) -> Path:
    """The real pipeline on shallow_cnn with random weights: 3 layers, every unit, AM and IAM, 2 steps.
    Built once per test session (cached under pytest's base temporary directory)."""
    out = tmp_path_factory.getbasetemp() / "analysis_real_run" / "run"
    if (out / "manifest.json").is_file():
        return out
    import repsub
    from repsub.data.synthetic import make_image_folder
    from repsub.models import load_model
    from repsub.optimize import OptimSettings

    data = make_image_folder(out.parent / "images", num_classes=3, images_per_class=6, size=16)
    model = load_model("shallow_cnn", weights="random", seed=0, device="cpu", num_classes=3)
    layers = ["conv1", "fc5", "fc6"]
    repsub.selectivity(
        model=model, data=data, out=out, image_size=16, layers=layers, device="cpu", workers=0, progress=False
    )
    settings = OptimSettings(steps=2, image_size=16, batch_size=128)
    for method in ("am", "iam"):
        repsub.visualize(
            model=model,
            method=method,
            layers=layers,
            out=out,
            settings=settings,
            device="cpu",
            progress=False,
        )
    return out


def units_rows(rng, method, units, n_layer, images=True, size=8):
    """Units rows whose RS agrees with their layer activations (as the pipeline's), status from the sign."""
    acts = rng.normal(size=(len(units), n_layer)).astype(np.float32)
    own = acts[np.arange(len(units)), units]
    rs = (acts > own[:, None]).sum(axis=1) / n_layer
    pictures = [png_bytes(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)) for _ in units]
    return pa.table({
        "method": [method] * len(units),
        "unit": pa.array(units, pa.int32()),
        "activation": pa.array(own, pa.float32()),
        "layer_activations": pa.array(list(acts), pa.list_(pa.float32())),
        "rs": pa.array(rs, pa.float64()),
        "rs_ties": pa.array(np.zeros(len(units)), pa.float64()),
        "status": pa.array(np.where(own > 0, "ok", "no_response"), pa.string()),
        "objective_start": pa.array(np.zeros(len(units)), pa.float32()),
        "objective_final": pa.array(own, pa.float32()),
        "image": pa.array(pictures if images else [None] * len(units), pa.binary()),
        "seed": pa.array(np.arange(len(units)), pa.int64()),
        "steps": pa.array(np.full(len(units), 2), pa.int32()),
    })  # fmt: skip


def selectivity_rows(units, values, dead, class_means=None):
    n = len(units)
    means = class_means if class_means is not None else [[0.0, 0.0, 0.0]] * n
    return pa.table({
        "unit": pa.array(units, pa.int32()),
        "selectivity": pa.array(values, pa.float64()),
        "top_class": pa.array(np.where(dead, -1, 0), pa.int32()),
        "class_means": pa.array(means, pa.list_(pa.float64())),
        "n_images": pa.array(np.full(n, 12), pa.int64()),
        "dead": pa.array(dead, pa.bool_()),
    })  # fmt: skip


def crafted_run(out: Path) -> Path:
    """A run written through the store with chosen edge cases: dead units, a NaN (not dead) logit,
    negative logit selectivity, RS rows without a selectivity row, a layer with RS only, missing units;
    statuses follow the sign of the activation (many no_response). No catalog in the manifest (an older
    run's shape): the layers come from the model registry."""
    rng = np.random.default_rng(7)
    writer = RunWriter(out)
    sel = rng.uniform(0, 1, 64)
    dead = np.zeros(64, bool)
    dead[[3, 10, 11, 20, 40, 63]] = True
    sel[dead] = np.nan
    writer.write_selectivity("conv1", selectivity_rows(np.arange(64), sel, dead))
    writer.write_selectivity(
        "fc5", selectivity_rows(np.arange(40), rng.uniform(0, 0.7, 40), np.zeros(40, bool))
    )
    writer.write_selectivity(
        "fc6", selectivity_rows(np.arange(3), np.array([-0.4, np.nan, 1.7]), np.zeros(3, bool))
    )
    record_command(writer, "selectivity", IDENTITY, {})
    writer.write_units("am", "conv1", units_rows(rng, "am", np.arange(64), 64))
    writer.write_units("iam", "conv1", units_rows(rng, "iam", np.arange(32), 64))
    writer.write_units(
        "am", "fc5", units_rows(rng, "am", np.r_[0:30, 100:110], 128)
    )  # 100-109: no selectivity
    writer.write_units("iam", "fc5", units_rows(rng, "iam", np.arange(30), 128))
    writer.write_units("am", "fc6", units_rows(rng, "am", np.arange(3), 3))
    writer.write_units(
        "am", "conv2", units_rows(rng, "am", np.arange(16), 64)
    )  # RS but no selectivity at all
    record_command(writer, "visualize/am", IDENTITY, {})
    record_command(writer, "visualize/iam", IDENTITY, {})
    return out


TOY_IDENTITY = {"model": "toy", "weights": "random", "weights_sha256": "1" * 64, "num_classes": 3}
TOY_CATALOG = [
    {"name": "stem", "units": 4, "module": "stem", "kind": "conv", "read": "relu", "depth": 0},
    {"name": "block", "units": 8, "module": "block", "kind": "conv", "read": "block", "depth": 1},
    {"name": "head", "units": 3, "module": "head", "kind": "linear", "read": "logits", "depth": 2},
]


def hand_run(out: Path) -> Path:
    """A model the registry does not know ('toy'), with its catalog in the manifest, and one layer whose
    every row is chosen by hand (see test_hand_computed_layer)."""
    writer = RunWriter(out)
    sel = [0.1, 0.5, math.nan, 0.9, 0.3, math.nan, 0.7]
    dead = [False, False, True, False, False, False, False]
    means = [[0.1, 0.5, 0.2], [0.3, 0.0, 0.9], [0.0, 0.0, 0.0], [2.0, 0.1, 0.1], [0.2, 0.3, 0.4], [1.0, 1.0, 1.0],
             [0.0, 0.6, 0.1]]  # fmt: skip
    writer.write_selectivity("block", selectivity_rows(np.arange(7), np.array(sel), np.array(dead), means))
    record_command(writer, "selectivity", TOY_IDENTITY, {"data": {"classes": ["cat", "dog", "<b>eel</b>"]}},
                  TOY_CATALOG, {"reduce": "max"})  # fmt: skip
    # unit: 0 ok, 1 ok, 2 dead, 3 no_response, 4 ok, 5 NaN selectivity, 6 nonfinite, 7 no selectivity row
    activation = [1.0, 2.0, 0.5, 0.0, 3.0, 1.5, math.nan, 0.7]
    rs = [0.2, 0.4, 0.9, 0.0, 0.6, 0.5, math.nan, 0.1]
    status = ["ok", "ok", "ok", "no_response", "ok", "ok", "nonfinite", "ok"]
    n = len(rs)
    rng = np.random.default_rng(0)
    table = pa.table({
        "method": ["iam"] * n,
        "unit": pa.array(range(n), pa.int32()),
        "activation": pa.array(activation, pa.float32()),
        "layer_activations": pa.array([[0.0] * 8] * n, pa.list_(pa.float32())),
        "rs": pa.array(rs, pa.float64()),
        "rs_ties": pa.array([0.0, 0.125, 0, 0.5, 0, 0, 0, 0], pa.float64()),
        "status": pa.array(status, pa.string()),
        "objective_start": pa.array(np.zeros(n), pa.float32()),
        "objective_final": pa.array(activation, pa.float32()),
        "image": pa.array([png_bytes(rng.integers(0, 255, (20, 12, 3), dtype=np.uint8)) for _ in range(n)]),
        "seed": pa.array(range(n), pa.int64()),
        "steps": pa.array([3] * n, pa.int32()),
    })  # fmt: skip
    writer.write_units("iam", "block", table)
    record_command(writer, "visualize/iam", TOY_IDENTITY, {}, TOY_CATALOG, {"reduce": "max"})
    return out


def set_mtime(path: Path, seconds_from_now: float) -> None:
    when = Path(path).stat().st_mtime + seconds_from_now
    os.utime(path, (when, when))


# ---------------------------------------------------------------- an independent reading of the stored columns


def newest_rows(paths, key_columns, columns):
    """{key: row} over Parquet files, the row of the most recently modified file winning (then the last path)."""
    ordered = sorted(paths, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    rows = {}
    for path in ordered:  # later (newer) files overwrite earlier ones
        layer = path.parent.name.removeprefix("layer=")
        t = pq.read_table(path, columns=[c for c in columns if c in pq.read_schema(path).names]).to_pylist()
        for row in t:
            row["layer"] = layer
            rows[tuple(row[k] for k in key_columns)] = row
    return rows


def stored_selectivity(run: Path) -> dict[tuple[str, int], dict]:
    return newest_rows(
        list(run.glob("selectivity/layer=*/*.parquet")), ["layer", "unit"], ["unit", "selectivity", "dead"]
    )


def stored_units(run: Path) -> dict[tuple[str, str, int], dict]:
    columns = ["method", "unit", "rs", "activation", "status", "rs_ties"]
    return newest_rows(list(run.glob("units/layer=*/*.parquet")), ["layer", "method", "unit"], columns)


def expected_reason(unit_row: dict, sel_row: dict | None) -> str | None:
    """The documented exclusion rule, written out."""
    status = unit_row.get("status")
    activation, rs = unit_row["activation"], unit_row["rs"]
    if status is None:  # a version 1 row: the documented derivation
        finite = activation is not None and rs is not None and math.isfinite(activation) and math.isfinite(rs)
        status = "nonfinite" if not finite else ("no_response" if activation <= 0 else "ok")
    if sel_row is not None and sel_row["dead"]:
        return "dead"
    if status != "ok":
        return status
    if rs is None or not math.isfinite(rs):
        return "nonfinite"
    if sel_row is None:
        return "no_selectivity"
    if sel_row["selectivity"] is None or not math.isfinite(sel_row["selectivity"]):
        return "nan_selectivity"
    return None


def expected_groups(run: Path) -> dict[tuple[str, str], dict]:
    """Per (layer, method): the included (selectivity, rs) pairs sorted by unit, and the reason counts."""
    sel, units = stored_selectivity(run), stored_units(run)
    groups: dict[tuple[str, str], dict] = {}
    for (layer, method, unit), row in sorted(units.items()):
        group = groups.setdefault((layer, method), {"x": [], "y": [], "reasons": dict.fromkeys(REASON_ORDER, 0),
                                                    "units_rs": 0})  # fmt: skip
        group["units_rs"] += 1
        s = sel.get((layer, unit))
        reason = expected_reason(row, s)
        if reason is None:
            group["x"].append(s["selectivity"])
            group["y"].append(row["rs"])
        else:
            group["reasons"][reason] += 1
    for group in groups.values():
        group["x"], group["y"] = np.array(group["x"], float), np.array(group["y"], float)
    return groups


def nan_equal(a, b, tol=1e-12) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol
