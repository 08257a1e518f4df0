"""Comparing two runs of one config value for value, bit for bit (the resume tests: a resumed run must equal an
uninterrupted one)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import repsub

COMPARED = {
    "units": (["layer", "method", "unit"],
              ["layer_activations", "rs", "rs_ties", "activation", "image", "status", "seed", "steps"]),
    "selectivity": (["layer", "unit"], ["class_means", "selectivity", "top_class", "n_images", "dead"]),
    "importance": (["layer", "ablation", "unit"], ["accuracy_drop", "loss_increase", "baseline_accuracy"]),
    # Below a sketch's k every value is kept: the small tests' quantiles are exact, so equal too.
    "quantiles": (["layer", "unit"], ["values", "n_images"]),
    "bands": (["layer", "unit", "band"], ["lower", "upper", "images", "class_counts", "sample"]),
}  # fmt: skip


def _bits(column: pa.ChunkedArray):
    """A column as comparable bits: floats by their bytes (NaN equals NaN, -0.0 differs from 0.0), lists by
    their offsets and flattened values."""
    array = column.combine_chunks()
    if pa.types.is_list(array.type):
        return np.asarray(array.offsets).tobytes(), _bits(pa.chunked_array([array.flatten()]))
    if pa.types.is_floating(array.type):
        return np.asarray(array.to_numpy(zero_copy_only=False)).tobytes()
    return array.to_pylist()


def assert_same_results(a, b) -> None:
    """Runs `a` and `b` hold the same rows with the same values, bit for bit, in every table they have."""
    run_a, run_b = repsub.open_run(a), repsub.open_run(b)
    compared = 0
    for table, (keys, columns) in COMPARED.items():
        ta, tb = run_a.table(table), run_b.table(table)
        assert (ta is None) == (tb is None), f"{table}: in one run only"
        if ta is None:
            continue
        order = [(key, "ascending") for key in keys]
        ta, tb = ta.sort_by(order), tb.sort_by(order)
        for name in keys + columns:
            assert _bits(ta.column(name)) == _bits(tb.column(name)), f"{table}.{name} differs"
        compared += ta.num_rows
    assert compared, "no rows to compare"
