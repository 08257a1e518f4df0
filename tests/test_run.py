"""Reading a run in a notebook (repsub.open_run): the joined per-unit frame against an independent join of the
Parquet files, pandas and polars, one unit's image, the statistics; one rule for duplicate rows everywhere;
version 1 runs; the summary as a view of the report's statistics."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import repsub
from repsub import cli
from repsub.analysis import FRAME_SCHEMA, build_report, compute_stats, load_run_data
from repsub.analysis.summary import format_summary, run_summary
from repsub.errors import RunError, UsageError
from repsub.runstore.tables import decode_png
from repsub.runstore.writer import RunWriter
from tests.report_helpers import (
    IDENTITY,
    crafted_run,
    expected_groups,
    expected_reason,
    real_run,
    selectivity_rows,
    set_mtime,
    stored_selectivity,
    stored_units,
    units_rows,
)
from tests.run_helpers import record_command


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    return crafted_run(tmp_path_factory.mktemp("run_crafted") / "run")


@pytest.mark.parametrize("which", ["real", "crafted"])
def test_frame_is_the_join_of_the_stored_tables(which, request):
    run_dir = request.getfixturevalue(which)
    run = repsub.open_run(run_dir)
    frame = run.frame()
    assert frame.schema == FRAME_SCHEMA
    sel, units = stored_selectivity(run_dir), stored_units(run_dir)
    catalog = {layer["name"]: layer for layer in run.layers}
    with_method = [r for r in frame.to_pylist() if r["method"] is not None]
    assert {(r["layer"], r["method"], r["unit"]) for r in with_method} == set(units)
    assert len(with_method) == len(units)  # one row per units row
    for row in with_method:
        stored = units[(row["layer"], row["method"], row["unit"])]
        s = sel.get((row["layer"], row["unit"]))
        assert row["rs"] == stored["rs"] and row["status"] == stored["status"]
        assert row["activation"] == pytest.approx(stored["activation"], rel=1e-6)
        assert row["excluded"] == expected_reason(stored, s)
        if s is None:
            assert row["selectivity"] is None and row["dead"] is None
        else:
            assert row["dead"] == s["dead"] and (
                row["selectivity"] == s["selectivity"] or math.isnan(row["selectivity"])
            )
        assert (row["depth"], row["read"]) == (catalog[row["layer"]]["depth"], catalog[row["layer"]]["read"])
    only_selectivity = {(r["layer"], r["unit"]) for r in frame.to_pylist() if r["method"] is None}
    assert only_selectivity == {k for k in sel if not any(u[0] == k[0] and u[2] == k[1] for u in units)}
    # Sorted by depth, method, unit.
    keys = [(r["depth"], r["method"] or "~", r["unit"]) for r in frame.to_pylist()]
    assert keys == sorted(keys)


def test_frame_options_pandas_and_polars(crafted):
    run = repsub.open_run(crafted)
    df = run.to_pandas(layers=["fc5"], methods=["am"])
    assert isinstance(df, pd.DataFrame) and set(df["layer"]) == {"fc5"} and set(df["method"]) == {"am"}
    assert (
        len(df) == 40 and df["excluded"].eq("no_selectivity").sum() >= 1
    )  # units 100-109 have no selectivity
    lf = run.to_polars(layers=["conv1"], class_means=True)
    assert isinstance(lf, pl.DataFrame) and lf["class_means"].dtype == pl.List(pl.Float64)
    assert lf.height == 64 + 32 and lf["class_means"].list.len().unique().to_list() == [3]
    acts = run.frame(layers=["fc6"], layer_activations=True)
    assert acts.column("layer_activations").type == pa.list_(pa.float32())
    with pytest.raises(UsageError, match=r"unknown layer\(s\) fc9.*valid: conv1, conv2"):
        run.frame(layers=["fc9"])
    with pytest.raises(UsageError, match=r"unknown method\(s\) xam; valid: am, iam"):
        run.frame(methods=["xam"])


def test_image_of_a_unit(real):
    run = repsub.open_run(real)
    image = run.image("fc5", 7, "am")
    stored = pq.read_table(next((real / "units" / "layer=fc5").glob("am-*.parquet"))).to_pydict()
    expected = decode_png(stored["image"][stored["unit"].index(7)])
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
    assert np.array_equal(
        np.asarray(run.image("fc5", 7)), np.asarray(run.image("fc5", 7, "iam"))
    )  # default iam
    with pytest.raises(RunError, match=r"has no am image of fc5 unit 999"):
        run.image("fc5", 999, "am")
    with pytest.raises(UsageError, match="unknown layer"):
        run.image("conv9", 0)


def test_stats_are_the_reports(real, tmp_path):
    run = repsub.open_run(real)
    html, _, _ = build_report(real, tmp_path)
    written = pq.read_table(html.parent / "stats.parquet").replace_schema_metadata(None)
    stats = run.stats()
    assert stats.schema == written.schema
    for name in stats.column_names:  # equal, NaN where NaN
        np.testing.assert_array_equal(
            stats.column(name).to_numpy(), written.column(name).to_numpy(), err_msg=name
        )
    assert (
        run.stats(high=0.9, resamples=10).column("n_high").to_pylist() != written.column("n_high").to_pylist()
    )
    assert "model shallow_cnn" in repr(run)


def test_duplicate_rows_one_rule_everywhere(crafted, tmp_path):
    """Overlapping files: the newest file's row counts in the frame, the statistics, the summary, the images."""
    run_dir = tmp_path / "run"
    shutil.copytree(crafted, run_dir)
    crafted_files = repsub.open_run(run_dir).files("units")
    rng = np.random.default_rng(99)
    newer = units_rows(rng, "am", np.arange(8), 64)
    newer = newer.set_column(newer.schema.get_field_index("rs"), "rs", pa.array(np.full(8, 0.99)))
    newer = newer.set_column(newer.schema.get_field_index("status"), "status", pa.array(["ok"] * 8))
    newer = newer.set_column(
        newer.schema.get_field_index("activation"), "activation", pa.array(np.ones(8), pa.float32())
    )
    extra = run_dir / "units" / "layer=conv1" / "am-copied-by-hand.parquet"
    pq.write_table(newer, extra)  # the same units as the original file, written later
    set_mtime(extra, 60)
    older_sel = run_dir / "selectivity" / "layer=conv1" / "older.parquet"
    pq.write_table(selectivity_rows(np.arange(4), np.full(4, 0.123), np.zeros(4, bool)), older_sel)
    set_mtime(older_sel, -3600)  # the original selectivity file stays the newest
    assert repsub.open_run(run_dir).files("units") == crafted_files  # not committed: not read
    record_command(RunWriter(run_dir), "selectivity", IDENTITY, {})  # the next write session adopts them

    run = repsub.open_run(run_dir)
    with pytest.warns(UserWarning) as caught:
        frame = run.frame(layers=["conv1"], methods=["am"]).to_pylist()
    said = " ".join(str(w.message) for w in caught)
    assert "units conv1 am: 8 duplicate row" in said and "selectivity conv1: 4 duplicate row" in said
    assert len(frame) == 64 and [r["rs"] for r in frame[:8]] == [0.99] * 8
    assert all(r["selectivity"] != 0.123 for r in frame)
    groups = expected_groups(run_dir)  # the independent reading: newest file wins
    stats = {(r["layer"], r["method"]): r for r in run.stats(resamples=10).to_pylist()}
    assert stats[("conv1", "am")]["n_included"] == len(groups[("conv1", "am")]["x"])
    assert stats[("conv1", "am")]["mean_rs"] == pytest.approx(float(np.mean(groups[("conv1", "am")]["y"])))
    summary = {r["layer"]: r for r in run_summary(run)}
    assert summary["conv1"]["mean_rs_am"] == pytest.approx(stats[("conv1", "am")]["mean_rs"])
    assert np.array_equal(
        np.asarray(run.image("conv1", 3, "am")), decode_png(newer.column("image")[3].as_py())
    )
    data = load_run_data(run)
    assert any("units conv1 am: 8 duplicate row(s)" in n for n in data.coverage.notes)
    assert any("selectivity conv1: 4 duplicate row(s)" in n for n in data.coverage.notes)


def test_version_1_run(crafted, tmp_path):
    """A run written before the per-unit status: status derived from the stored values, the same rule."""
    run_dir = tmp_path / "v1"
    shutil.copytree(crafted, run_dir, ignore=shutil.ignore_patterns("report"))
    for path in run_dir.glob("units/layer=*/*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["status", "rs_ties", "objective_start", "objective_final"]), path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    run = repsub.open_run(run_dir)
    frame = run.frame().to_pylist()
    units = stored_units(run_dir)
    assert all(units[k].get("status") is None for k in units)  # nothing stored
    for row in (r for r in frame if r["method"] is not None):
        stored = units[(row["layer"], row["method"], row["unit"])]
        assert row["status"] == ("no_response" if stored["activation"] <= 0 else "ok")
    stats = {(r["layer"], r["method"]): r for r in run.stats(resamples=10).to_pylist()}
    for key, group in expected_groups(run_dir).items():
        assert stats[key]["n_included"] == len(group["x"])
        assert stats[key]["excluded_no_response"] == group["reasons"]["no_response"]


def test_summary_is_a_view_of_the_statistics(crafted, capsys):
    run = repsub.open_run(crafted)
    stats = compute_stats(load_run_data(run))
    rows = run_summary(run)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc5", "fc6"]
    for row in stats.to_pylist():
        line = next(r for r in rows if r["layer"] == row["layer"])
        assert (line["read"], line["units"], line["dead"]) == (row["read"], row["units"], row["dead"])
        m = row["method"]
        assert line[f"n_{m}"] == row["n_included"]
        assert line[f"mean_rs_{m}"] == row["mean_rs"] or math.isnan(row["mean_rs"])
        assert line[f"spearman_{m}"] == row["spearman_rho"] or math.isnan(row["spearman_rho"])
        reasons = [f"{r} {row[f'excluded_{r}']}" for r in ("dead", "no_response") if row[f"excluded_{r}"]]
        for reason in reasons:
            assert reason in line[f"left_out_{m}"]
    text = format_summary(rows)
    assert cli.main(["summary", str(crafted)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == text.strip() and "left_out_am" in printed and "no_response" in printed
    assert cli.main(["summary", str(crafted / "nothing")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_summary_of_a_run_without_units(tmp_path):
    writer = RunWriter(tmp_path / "run")
    writer.write_selectivity(
        "conv1", selectivity_rows(np.arange(4), np.array([0.1, 0.2, 0.3, 0.4]), np.zeros(4, bool))
    )
    record_command(writer, "selectivity", IDENTITY, {})
    rows = run_summary(repsub.open_run(tmp_path / "run"))
    assert rows == [
        {"layer": "conv1", "read": "relu", "units": 4, "dead": 0, "mean_selectivity": pytest.approx(0.25)}
    ]
