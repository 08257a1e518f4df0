"""Importance by ablation in the analysis (issue 14): the statistics against scipy on the stored columns, the
exclusions counted by reason, the bootstrap as a plain loop, the per-unit frame's columns, the figures, the
summary, and a run without importance left exactly as it was. The page's explorer: tests/test_report_page.py."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as sps

import repsub
from repsub import cli
from repsub.analysis.exclusion import IMPORTANCE_REASONS
from repsub.analysis.importance_stats import IMPORTANCE_STATS_FILE, IMPORTANCE_STATS_SCHEMA
from repsub.analysis.report import build_report
from repsub.analysis.stats import bootstrap_rng
from repsub.errors import RunError
from repsub.runstore.writer import RunWriter
from tests.importance_helpers import (
    IMPORTANCE_REASON_ORDER,
    N_IMAGES,
    expected_importance_reason,
    importance_rows,
    importance_run,
    stored_importance,
)
from tests.report_helpers import hand_run, nan_equal, stored_selectivity, stored_units
from tests.run_helpers import adopt_stray_files

RESAMPLES = 200


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return importance_run(tmp_path_factory.mktemp("importance") / "run", images=False)


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    return build_report(run_dir, tmp_path_factory.mktemp("importance_report"), resamples=RESAMPLES)


def expected_groups(run_dir) -> dict[tuple, dict]:
    """Per (layer, ablation, against): the included (importance measures, other) values in unit order, and
    the reason counts, from the files read one by one."""
    imp, sel, units = stored_importance(run_dir), stored_selectivity(run_dir), stored_units(run_dir)
    groups: dict[tuple, dict] = {}
    for (layer, ablation, unit), row in sorted(imp.items()):
        for against in ("rs_am", "rs_iam", "selectivity"):
            group = groups.setdefault((layer, ablation, against), {
                "accuracy_drop": [], "loss_increase": [], "other": [], "units": 0,
                "reasons": dict.fromkeys(IMPORTANCE_REASON_ORDER, 0), "baseline": [], "n_images": [],
            })  # fmt: skip
            group["units"] += 1
            group["baseline"].append(row["baseline_accuracy"])
            group["n_images"].append(row["n_images"])
            s = sel.get((layer, unit))
            u = None if against == "selectivity" else units.get((layer, against[3:], unit))
            reason = expected_importance_reason(row, s, u, against)
            if reason is not None:
                group["reasons"][reason] += 1
                continue
            group["accuracy_drop"].append(row["accuracy_drop"])
            group["loss_increase"].append(row["loss_increase"])
            group["other"].append(s["selectivity"] if against == "selectivity" else u["rs"])
    return groups


def test_statistics_equal_scipy_on_stored_columns(run_dir, report):
    html, _, _ = report
    written = pq.read_table(html.parent / IMPORTANCE_STATS_FILE)
    assert written.schema.remove_metadata() == IMPORTANCE_STATS_SCHEMA
    groups = expected_groups(run_dir)
    rows = {(r["layer"], r["ablation"], r["against"], r["measure"]): r for r in written.to_pylist()}
    assert len(rows) == written.num_rows == 2 * len(groups)  # two measures per relation
    assert {k[:3] for k in rows} == set(groups)
    checked = 0
    for (layer, ablation, against, measure), row in rows.items():
        group = groups[(layer, ablation, against)]
        assert row["units"] == group["units"] and row["n_images"] == N_IMAGES
        assert row["baseline_accuracy"] == pytest.approx(np.mean(group["baseline"]))
        assert {r: row[f"excluded_{r}"] for r in IMPORTANCE_REASON_ORDER} == group["reasons"]
        assert row["units"] == row["n_included"] + sum(row[f"excluded_{r}"] for r in IMPORTANCE_REASONS)
        x, y = np.array(group[measure]), np.array(group["other"])
        assert row["n_included"] == len(x)
        assert nan_equal(row["mean_importance"], float(x.mean()) if len(x) else math.nan)
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            ref = sps.spearmanr(x, y)
            assert row["spearman_rho"] == pytest.approx(ref.statistic, abs=1e-12)
            assert row["spearman_p"] == pytest.approx(ref.pvalue, rel=1e-9)
            assert row["rho_ci_low"] <= row["rho_ci_high"] and row["bootstrap_resamples"] > 0
            checked += 1
        else:
            assert math.isnan(row["spearman_rho"]) and math.isnan(row["rho_ci_low"])
    assert checked >= 10
    # The crafted edge cases are all exercised, each counted where the documented order puts it.
    conv_am, conv_iam = (
        rows[("conv", "zero", "rs_am", "accuracy_drop")],
        rows[("conv", "zero", "rs_iam", "accuracy_drop")],
    )
    assert conv_am["excluded_dead"] == 2 and conv_am["excluded_no_rs"] == 12  # AM rows stop at 35, of 0-47
    assert conv_iam["excluded_no_rs"] == 2 and conv_iam["excluded_nonfinite"] == 1  # 46, 47; unit 5
    assert conv_iam["excluded_nan_importance"] == 1 and conv_iam["excluded_nan_selectivity"] == 1  # 13; 11
    assert conv_iam["excluded_no_response"] > 0 and conv_iam["excluded_no_selectivity"] == 2  # 44, 45
    conv_sel = rows[("conv", "zero", "selectivity", "accuracy_drop")]
    assert (conv_sel["excluded_no_rs"], conv_sel["excluded_no_response"]) == (0, 0)  # RS rules do not apply
    assert conv_sel["excluded_no_selectivity"] == 4 and conv_sel["n_included"] == 48 - 2 - 4 - 1 - 1
    assert rows[("fc", "zero", "selectivity", "loss_increase")]["excluded_no_selectivity"] == 5
    # Depth order, and a relation for every method of the run.
    assert list(dict.fromkeys(r["layer"] for r in written.to_pylist())) == ["conv", "fc", "logits"]
    meta = json.loads(written.schema.metadata[b"repsub_importance"])
    assert meta["exclusions"] == IMPORTANCE_REASONS and meta["bootstrap_resamples"] == RESAMPLES
    assert set(meta["importance_commands"]) == {"importance/zero", "importance/mean"}


def test_duplicate_importance_rows_newest_file_wins(run_dir):
    run = repsub.open_run(run_dir)
    with pytest.warns(UserWarning, match="importance conv zero: 5 duplicate row"):
        frame = run.frame(layers=["conv"]).to_pylist()
    newer = pq.read_table(run_dir / "importance" / "layer=conv" / "zero-copied-by-hand.parquet").to_pylist()
    by_unit = {r["unit"]: r for r in frame if r["method"] in (None, "iam")}
    for row in newer:
        assert by_unit[row["unit"]]["importance_zero"] == row["accuracy_drop"]
        assert by_unit[row["unit"]]["loss_increase_zero"] == row["loss_increase"]


def test_bootstrap_interval_matches_a_plain_loop(run_dir, report):
    group = expected_groups(run_dir)[("conv", "zero", "rs_iam")]
    x, y = np.array(group["loss_increase"]), np.array(group["other"])
    rng = bootstrap_rng(0, "conv", "importance/zero/loss_increase/rs_iam")
    rhos = []
    for _ in range(RESAMPLES):
        idx = rng.integers(0, len(x), size=len(x))
        rhos.append(sps.spearmanr(x[idx], y[idx]).statistic)
    rhos = np.array(rhos)
    low, high = np.percentile(rhos[np.isfinite(rhos)], [2.5, 97.5])
    written = pq.read_table(report[0].parent / IMPORTANCE_STATS_FILE).to_pylist()
    row = next(r for r in written if (r["layer"], r["ablation"], r["measure"], r["against"])
               == ("conv", "zero", "loss_increase", "rs_iam"))  # fmt: skip
    assert (row["rho_ci_low"], row["rho_ci_high"]) == (
        pytest.approx(low, abs=1e-9),
        pytest.approx(high, abs=1e-9),
    )
    assert row["bootstrap_resamples"] == int(np.isfinite(rhos).sum())


def test_hand_computed_layer(tmp_path):
    """Importance of the hand-made layer of tests/report_helpers.hand_run, worked out on paper."""
    run_dir = hand_run(tmp_path / "run")
    # units 0-7 of `block`: 0 ok, 1 ok, 2 dead, 3 no_response, 4 ok, 5 NaN selectivity, 6 nonfinite, 7 no
    # selectivity row (tests/report_helpers.hand_run). Drops chosen so that the ranks are easy.
    rows = importance_rows(np.random.default_rng(0), "mean", np.arange(8))
    drops = [0.3, 0.1, 0.5, 0.0, 0.2, 0.4, 0.6, 0.7]
    rows = rows.set_column(rows.schema.get_field_index("accuracy_drop"), "accuracy_drop", pa.array(drops))
    RunWriter(run_dir).write_table("importance", "block", rows)
    stats = {
        (r["against"], r["measure"]): r
        for r in repsub.open_run(run_dir).importance_stats(resamples=20).to_pylist()
    }
    iam = stats[("rs_iam", "accuracy_drop")]
    # included: units 0, 1, 4 (RS 0.2, 0.4, 0.6; drops 0.3, 0.1, 0.2): ranks (3, 1, 2) vs (1, 2, 3) -> rho -0.5
    assert iam["n_included"] == 3 and iam["spearman_rho"] == pytest.approx(-0.5)
    assert {r: iam[f"excluded_{r}"] for r in IMPORTANCE_REASONS if iam[f"excluded_{r}"]} == {
        "dead": 1, "no_response": 1, "nonfinite": 1, "no_selectivity": 1, "nan_selectivity": 1,
    }  # fmt: skip
    assert iam["mean_importance"] == pytest.approx(0.2)
    sel = stats[("selectivity", "accuracy_drop")]
    # alive with finite selectivity: 0 (0.1), 1 (0.5), 3 (0.9), 4 (0.3), 6 (0.7); drops 0.3, 0.1, 0.0, 0.2, 0.6
    assert sel["n_included"] == 5 and sel["excluded_no_response"] == 0 and sel["excluded_nonfinite"] == 0
    assert sel["spearman_rho"] == pytest.approx(
        sps.spearmanr([0.1, 0.5, 0.9, 0.3, 0.7], [0.3, 0.1, 0.0, 0.2, 0.6]).statistic
    )
    assert [k for k in stats if k[1] == "accuracy_drop"] == [
        ("rs_iam", "accuracy_drop"),
        ("selectivity", "accuracy_drop"),
    ]


# ---------------------------------------------------------------- the frame, figures, summary, page


def test_frame_has_the_importance_columns(run_dir):
    run = repsub.open_run(run_dir)
    with pytest.warns(UserWarning):
        frame = run.frame().to_pylist()
    imp = stored_importance(run_dir)
    for row in frame:
        for ablation in ("zero", "mean"):
            stored = imp.get((row["layer"], ablation, row["unit"]))
            for column, measure in ((f"importance_{ablation}", "accuracy_drop"),
                                    (f"loss_increase_{ablation}", "loss_increase")):  # fmt: skip
                assert nan_equal(row[column], None if stored is None else stored[measure]), (row, column)
    # Units with importance only (no selectivity or units row) have a row with method null.
    only = [(r["layer"], r["unit"]) for r in frame if r["method"] is None]
    assert ("conv", 46) in only and ("conv", 47) in only
    assert [r["depth"] for r in frame] == sorted(r["depth"] for r in frame)
    df = run.to_pandas(layers=["fc"], methods=["iam"])
    assert len(df) == 30 and df["importance_zero"].notna().all() and df["importance_mean"].isna().all()


def test_figures_and_page_section(report):
    html, _, _ = report
    figures = html.parent / "figures"
    for against in ("rs_am", "rs_iam", "selectivity"):
        path = figures / f"importance_vs_{against}_rho_by_depth.png"
        assert path.is_file() and path.stat().st_size > 1000
        from PIL import Image

        with Image.open(path) as img:
            assert np.asarray(img.convert("L")).std() > 1
    page = html.read_text(encoding="utf-8")
    assert 'id="importance-stats"' in page and 'id="f-ablation"' in page
    rows = pq.read_table(html.parent / IMPORTANCE_STATS_FILE)
    shown = {(r["layer"], r["ablation"], r["measure"]) for r in rows.to_pylist()}
    for layer, ablation, measure in shown:
        assert f'data-layer="{layer}" data-ablation="{ablation}" data-measure="{measure}"' in page


def test_summary_and_run_api_agree_with_the_report(run_dir, report, capsys):
    run = repsub.open_run(run_dir)
    written = pq.read_table(report[0].parent / IMPORTANCE_STATS_FILE).replace_schema_metadata(None)
    mine = run.importance_stats(resamples=RESAMPLES)  # duplicates are counted in the notes, not warned
    assert mine.schema == written.schema
    for name in mine.column_names:
        np.testing.assert_array_equal(
            mine.column(name).to_numpy(), written.column(name).to_numpy(), err_msg=name
        )
    assert cli.main(["summary", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.splitlines()]
    header = next(line for line in lines if line[:3] == ["layer", "ablation", "measure"])
    body = [line for line in lines if len(line) == len(header) and line[1] in ("zero", "mean")]
    assert len(body) == len({(r["layer"], r["ablation"], r["measure"]) for r in written.to_pylist()})
    for line in body:
        cells = dict(zip(header, line, strict=True))
        for against in ("rs_am", "rs_iam", "selectivity"):
            row = next(r for r in written.to_pylist() if (r["layer"], r["ablation"], r["measure"], r["against"])
                       == (cells["layer"], cells["ablation"], cells["measure"], against))  # fmt: skip
            assert cells[f"n_{against}"] == str(row["n_included"])
            assert cells[f"rho_{against}"] == (
                "nan" if math.isnan(row["spearman_rho"]) else f"{row['spearman_rho']:.3f}"
            )


def test_run_without_importance_is_unchanged(run_dir, report, tmp_path):
    """The same run without its importance table: the same frame (importance columns null, no importance-only
    rows), the same statistics, no importance file, figure, page section or summary block."""
    bare = tmp_path / "bare"
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("importance", "report"))
    with_imp, without = repsub.open_run(run_dir), repsub.open_run(bare)
    assert without.importance is None and repr(without).endswith("tables selectivity, units)")
    with pytest.warns(UserWarning):
        full = with_imp.frame()
    plain = without.frame()
    importance_columns = ["importance_zero", "importance_mean", "loss_increase_zero", "loss_increase_mean"]
    for name in importance_columns:
        assert plain.column(name).null_count == plain.num_rows
    kept = [
        i
        for i, r in enumerate(full.to_pylist())
        if (r["layer"], r["unit"]) not in {("conv", 46), ("conv", 47)}
    ]
    # NaN != NaN for Table.equals: compare pandas frames, where NaN equals NaN.
    pd.testing.assert_frame_equal(
        full.take(kept).drop_columns(importance_columns).to_pandas(),
        plain.drop_columns(importance_columns).to_pandas(),
    )
    html, data, stats = build_report(bare, tmp_path / "out", resamples=RESAMPLES)
    assert data.importance is None and not (tmp_path / "out" / IMPORTANCE_STATS_FILE).exists()
    assert not list((tmp_path / "out" / "figures").glob("importance_*"))
    page = html.read_text(encoding="utf-8")
    markup = page.split("<script>")[0]  # before the explorer's script (which handles both kinds of run)
    assert 'id="importance"' not in markup and 'id="f-ablation"' not in markup and "f-imp-min" not in markup
    assert '"importance":null' in page  # the explorer's data says so; its script leaves the controls out
    pd.testing.assert_frame_equal(stats.to_pandas(), report[2].to_pandas())  # RS statistics: unchanged
    assert without.importance_stats().num_rows == 0
    # A report rewritten after the importance table went away drops the stale file.
    out = tmp_path / "again"
    build_report(run_dir, out, resamples=10)
    assert (out / IMPORTANCE_STATS_FILE).exists()
    build_report(bare, out, resamples=10)
    assert not (out / IMPORTANCE_STATS_FILE).exists() and not list((out / "figures").glob("importance_*"))


def test_unknown_ablation_is_a_run_error(tmp_path):
    run_dir = hand_run(tmp_path / "run")
    path = run_dir / "importance" / "layer=block"
    path.mkdir(parents=True)
    pq.write_table(importance_rows(np.random.default_rng(0), "shuffle", np.arange(3)), path / "x.parquet")
    adopt_stray_files(run_dir)
    with pytest.raises(RunError, match=r"unknown ablation\(s\) shuffle; known: zero, mean"):
        repsub.open_run(run_dir).frame()


def test_bootstrap_rho_of_each_resample_equals_scipy():
    """The bootstrap's rho of a resample (counts of each pair, no sort per resample) against scipy on the
    resample itself: ties on both sides (importance is a few images), and resamples where one side is constant."""
    from repsub.analysis.stats import _resampled_spearman, _tie_groups

    rng = np.random.default_rng(3)
    for n in (3, 5, 40, 300):
        x = np.round(rng.exponential(1, n) * 3) / 3  # many ties
        y = np.round(rng.uniform(size=n) * 5)
        idx = np.stack([rng.integers(0, n, size=n) for _ in range(200)])
        got = _resampled_spearman(_tie_groups(x), _tie_groups(y), idx)
        for row, rho in zip(idx, got, strict=True):
            if np.ptp(x[row]) == 0 or np.ptp(y[row]) == 0:
                assert math.isnan(rho)
            else:
                assert rho == pytest.approx(sps.spearmanr(x[row], y[row]).statistic, abs=1e-12)
        if n == 3:
            assert np.isnan(got).any()  # constant resamples do occur at n = 3
