import math

from repsub.demo import run_demo
from repsub.store import open_run


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
        for method in ("am", "iam"):  # mean RS over the included units; none included: NaN
            mean = row[f"mean_rs_{method}"]
            assert 0 <= mean <= 1 if row[f"n_{method}"] else math.isnan(mean)
    run = open_run(tmp_path / "run")
    assert run.units.count_rows() == 2 * 522
    assert (tmp_path / "cache" / "demo-data" / "complete.json").is_file()
