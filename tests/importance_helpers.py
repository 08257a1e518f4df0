"""A run with an importance table (issue 14's contract) for the analysis tests, and an independent reading of it.

The run is written through repsub's RunWriter (`write_table("importance", ...)`, the lead's writer), with
chosen edge cases; the independent side reads the Parquet files one by one and applies the documented rules
in plain loops (newest file wins; the first reason in the documented order), as tests/report_helpers.py does
for the units and selectivity tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from repsub.runstore.writer import RunWriter
from tests.report_helpers import newest_rows, selectivity_rows, set_mtime, units_rows
from tests.run_helpers import record_command

IDENTITY = {"model": "toy2", "weights": "random", "weights_sha256": "2" * 64, "num_classes": 4}
CATALOG = [
    {"name": "conv", "units": 48, "module": "conv", "kind": "conv", "read": "relu", "depth": 0},
    {"name": "fc", "units": 30, "module": "fc", "kind": "linear", "read": "relu", "depth": 1},
    {"name": "logits", "units": 4, "module": "logits", "kind": "linear", "read": "logits", "depth": 2},
]
N_IMAGES = 40  # of the importance measurement: accuracy drops are multiples of 1/40 (ties, as in real runs)
IMPORTANCE_REASON_ORDER = ["dead", "no_rs", "no_response", "nonfinite", "no_selectivity", "nan_selectivity",
                           "nan_importance"]  # fmt: skip


def importance_rows(rng, ablation: str, units, rs_hint=None, baseline: float = 0.75) -> pa.Table:
    """Rows of the contract's shape. The accuracy drop follows `rs_hint` (falling with it) plus noise, rounded
    to whole images; the loss increase is continuous; 4 classes, class 3 without images (NaN)."""
    units = np.asarray(units)
    hint = np.zeros(len(units)) if rs_hint is None else np.nan_to_num(np.asarray(rs_hint, float), nan=0.5)
    drop = np.round((0.2 - 0.2 * hint + rng.normal(0, 0.05, len(units))) * N_IMAGES) / N_IMAGES
    loss = 0.5 - 0.4 * hint + rng.normal(0, 0.1, len(units))
    classes = [[*rng.normal(d, 0.1, 3).round(3).tolist(), math.nan] for d in drop]
    return pa.table({
        "unit": pa.array(units, pa.int32()),
        "n_images": pa.array(np.full(len(units), N_IMAGES), pa.int64()),
        "baseline_accuracy": pa.array(np.full(len(units), baseline), pa.float64()),
        "accuracy_drop": pa.array(drop, pa.float64()),
        "loss_increase": pa.array(loss, pa.float64()),
        "class_accuracy_drop": pa.array(classes, pa.list_(pa.float64())),
        "ablation": pa.array([ablation] * len(units), pa.string()),
        "command": pa.array([f"importance/{ablation}"] * len(units), pa.string()),
    })  # fmt: skip


def _set(table: pa.Table, name: str, index: int, value) -> pa.Table:
    values = table.column(name).to_pylist()
    values[index] = value
    return table.set_column(
        table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type)
    )


def importance_run(out: Path, images: bool = True) -> Path:
    """Layers conv (48 units), fc (30), logits (4), catalog in the manifest. Edge cases:

    conv: units 3 and 7 dead, 11 NaN selectivity (not dead); AM rows for 0-35 only (36-47: no RS of AM),
    IAM for 0-45 (46 and 47: importance only, no other row), IAM unit 5 nonfinite, 11, 13, 44, 45 ok; no_response where the random own activation is <= 0; zero ablation: unit 13's
    accuracy drop NaN, unit 45 has no selectivity (44-47 have none: the selectivity rows stop at 44), units
    0-4 also in a newer file with other values (the newer wins); mean ablation for 0-39.
    fc: selectivity for 0-24 only; zero ablation for every unit. logits: AM and IAM, zero ablation, signed.
    """
    rng = np.random.default_rng(14)
    writer = RunWriter(out)
    sel = rng.uniform(0, 1, 44)
    dead = np.zeros(44, bool)
    dead[[3, 7]] = True
    sel[dead] = np.nan
    sel[11] = np.nan
    writer.write_selectivity("conv", selectivity_rows(np.arange(44), sel, dead, [[0.1, 0.2, 0.3]] * 44))
    writer.write_selectivity("fc", selectivity_rows(np.arange(25), rng.uniform(0, 1, 25), np.zeros(25, bool)))
    writer.write_selectivity(
        "logits", selectivity_rows(np.arange(4), np.array([-0.3, 0.8, 1.4, 0.2]), np.zeros(4, bool))
    )
    record_command(writer, "selectivity", IDENTITY, {}, CATALOG, {"reduce": "mean"})
    rs = {}
    for method, layer, units, width in (("am", "conv", np.arange(36), 48), ("iam", "conv", np.arange(46), 48),
                                        ("am", "fc", np.arange(30), 30), ("iam", "fc", np.arange(30), 30),
                                        ("am", "logits", np.arange(4), 4), ("iam", "logits", np.arange(4), 4)):  # fmt: skip
        table = units_rows(rng, method, units, width, images=images, size=8)
        if (method, layer) == ("iam", "conv"):
            table = _set(_set(table, "rs", 5, math.nan), "status", 5, "nonfinite")
            for unit in (11, 13, 44, 45):  # responding, so that their other reason shows (see above)
                table = _set(table, "status", unit, "ok")
        writer.write_units(method, layer, table)
        rs[(method, layer)] = dict(
            zip(table.column("unit").to_pylist(), table.column("rs").to_pylist(), strict=True)
        )
        record_command(writer, f"visualize/{method}", IDENTITY, {}, CATALOG, {"reduce": "mean"})
    hint = {layer: [rs[("iam", layer)].get(u) for u in range(48)] for layer in ("conv", "fc", "logits")}
    zero = importance_rows(rng, "zero", np.arange(48), hint["conv"])
    zero = _set(zero, "accuracy_drop", 13, math.nan)
    writer.write_table("importance", "conv", zero)
    newer = importance_rows(rng, "zero", np.arange(5), baseline=0.75)
    path = out / "importance" / "layer=conv" / "zero-copied-by-hand.parquet"
    pq.write_table(newer, path)  # the same units as the writer's file, written later
    set_mtime(path, 60)
    writer.write_table("importance", "conv", importance_rows(rng, "mean", np.arange(40), hint["conv"][:40]))
    writer.write_table("importance", "fc", importance_rows(rng, "zero", np.arange(30), hint["fc"][:30], 0.7))
    writer.write_table("importance", "logits", importance_rows(rng, "zero", np.arange(4), hint["logits"][:4]))
    for ablation in ("zero", "mean"):
        record_command(writer, f"importance/{ablation}", IDENTITY, {"ablation": ablation, "images": N_IMAGES}, CATALOG,
                      {"reduce": "mean"})  # fmt: skip
    return out


# ---------------------------------------------------------------- the independent reading


def stored_importance(run: Path) -> dict[tuple[str, str, int], dict]:
    columns = ["unit", "ablation", "n_images", "baseline_accuracy", "accuracy_drop", "loss_increase",
               "class_accuracy_drop"]  # fmt: skip
    return newest_rows(list(run.glob("importance/layer=*/*.parquet")), ["layer", "ablation", "unit"], columns)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def expected_importance_reason(imp: dict, sel: dict | None, unit: dict | None, against: str) -> str | None:
    """The documented rule, written out: dead, then (against RS) no units row, the row's status, its RS, then
    selectivity missing or NaN, then importance not finite."""
    if sel is not None and sel["dead"]:
        return "dead"
    if against != "selectivity":
        if unit is None:
            return "no_rs"
        if unit["status"] != "ok":
            return unit["status"]
        if not _finite(unit["rs"]):
            return "nonfinite"
    if sel is None:
        return "no_selectivity"
    if not _finite(sel["selectivity"]):
        return "nan_selectivity"
    if not (_finite(imp["accuracy_drop"]) and _finite(imp["loss_increase"])):
        return "nan_importance"
    return None
