import math

import numpy as np
import pytest

from repsub.analysis.run import open_run
from repsub.commands.demo import run_demo


def test_demo_end_to_end(tmp_path):
    rows = run_demo(
        out=str(tmp_path / "run"), cache=str(tmp_path / "cache"), steps=2, epochs=2, progress=False
    )
    assert [row["layer"] for row in rows] == ["conv1", "conv2", "conv3", "conv4", "fc5", "fc6"]
    assert [row["units"] for row in rows] == [64, 64, 128, 128, 128, 10]
    assert [row["read"] for row in rows] == ["relu"] * 5 + ["logits"]
    for row in rows:
        assert {
            "dead",
            "mean_selectivity",
            "mean_rs_am",
            "mean_rs_iam",
            "spearman_am",
            "spearman_iam",
            "n_am",
            "left_out_am",
        } <= set(row)
    run = open_run(tmp_path / "run")
    assert run.units.count_rows() == 2 * 522
    columns = ["layer", "method", "unit", "rs", "status", "layer_activations"]
    units = run.units.to_table(columns=columns).to_pylist()
    for r in units:  # RS recomputed from the stored activations: the units strictly above the unit's own
        x = np.array(r["layer_activations"], dtype=np.float32)
        assert r["rs"] == (x > x[r["unit"]]).sum() / len(x) or r["status"] == "nonfinite"
    selectivity = {
        (r["layer"], r["unit"]): r
        for r in run.selectivity.to_table(columns=["layer", "unit", "selectivity", "dead"]).to_pylist()
    }
    for row in rows:  # the summary's mean RS: over alive units with status ok and finite values (README)
        for method in ("am", "iam"):
            included = [
                r["rs"] for r in units
                if r["layer"] == row["layer"] and r["method"] == method and r["status"] == "ok"
                and math.isfinite(r["rs"]) and not selectivity[(r["layer"], r["unit"])]["dead"]
                and math.isfinite(selectivity[(r["layer"], r["unit"])]["selectivity"])
            ]  # fmt: skip
            assert row[f"n_{method}"] == len(included)
            mean = row[f"mean_rs_{method}"]
            assert mean == pytest.approx(np.mean(included)) if included else math.isnan(mean)
    assert (tmp_path / "cache" / "demo-data" / "complete.json").is_file()
