"""`repsub report`: statistics against scipy on the stored columns (exclusions counted by reason), figures,
the page's static content, partial and empty runs, the errors for paths that hold no usable run, and a
report that fails leaving the previous one intact. The page's unit explorer: tests/test_report_page.py."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as sps

from repsub.analysis.commands import add_report_parser, cmd_report
from repsub.analysis.exclusion import REASONS
from repsub.analysis.figures import choose_grid_unit, substitution_grid
from repsub.analysis.load import load_run_data
from repsub.analysis.report import build_report, write_report
from repsub.analysis.run import open_run
from repsub.analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    HIGH_SELECTIVITY,
    LOW_SELECTIVITY,
    STATS_SCHEMA,
    StatsOptions,
    bootstrap_rng,
    compute_stats,
)
from repsub.errors import RunError, UsageError
from repsub.selection import parse_units, ranges_text
from tests.chromium import Chromium
from tests.report_helpers import (
    REASON_ORDER,
    crafted_run,
    expected_groups,
    hand_run,
    nan_equal,
    real_run,
    stored_selectivity,
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_run(tmp_path_factory)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    return crafted_run(tmp_path_factory.mktemp("report_crafted") / "run")


@pytest.fixture(scope="module")
def crafted_report(crafted, tmp_path_factory):
    return build_report(crafted, tmp_path_factory.mktemp("crafted_report"), resamples=200)


@pytest.fixture(scope="module")
def real_report(real):
    return build_report(real)  # default output directory: RUN/report


@pytest.fixture(scope="module")
def browser():
    with Chromium() as chromium:
        yield chromium


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("which", ["crafted_report", "real_report"])
def test_statistics_equal_scipy_on_stored_columns(which, request):
    html_path, _, _ = request.getfixturevalue(which)
    run = request.getfixturevalue("real" if which == "real_report" else "crafted")
    sel = stored_selectivity(run)
    groups = expected_groups(run)
    written = pq.read_table(html_path.parent / "stats.parquet")
    assert written.schema.remove_metadata() == STATS_SCHEMA
    rows = {(r["layer"], r["method"]): r for r in written.to_pylist()}
    assert len(rows) == written.num_rows  # one row per (layer, method)
    sel_layers = {layer for layer, _ in sel}
    assert set(rows) == set(groups) | {(la, None) for la in sel_layers if not any(k[0] == la for k in groups)}
    excluded_some = 0
    for (layer, method), row in rows.items():
        layer_sel = [v for (la, _), v in sel.items() if la == layer]
        alive = np.array([v["selectivity"] for v in layer_sel if not v["dead"]], dtype=float)
        alive = alive[np.isfinite(alive)]
        if layer_sel:
            assert row["units"] == len(layer_sel) and row["dead"] == sum(v["dead"] for v in layer_sel)
            assert nan_equal(row["mean_selectivity"], float(np.mean(alive)) if len(alive) else math.nan)
            assert nan_equal(row["median_selectivity"], float(np.median(alive)) if len(alive) else math.nan)
            assert row["n_high"] == int((alive >= HIGH_SELECTIVITY).sum())
            assert row["n_low"] == int((alive <= LOW_SELECTIVITY).sum())
        else:
            assert row["units"] is None
        if method is None:
            assert row["spearman_rho"] is None and row["units_rs"] is None
            continue
        group = groups[(layer, method)]
        x, y = group["x"], group["y"]
        assert row["units_rs"] == group["units_rs"] and row["n_included"] == len(x)
        assert {r: row[f"excluded_{r}"] for r in REASON_ORDER} == group["reasons"]
        assert row["units_rs"] == row["n_included"] + sum(row[f"excluded_{r}"] for r in REASONS)
        excluded_some += sum(group["reasons"].values())
        assert nan_equal(row["mean_rs"], float(np.mean(y)) if len(y) else math.nan)
        assert nan_equal(row["median_rs"], float(np.median(y)) if len(y) else math.nan)
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            ref = sps.spearmanr(x, y)
            assert row["spearman_rho"] == pytest.approx(ref.statistic, abs=1e-12)
            assert row["spearman_p"] == pytest.approx(ref.pvalue, rel=1e-9)
            assert row["rho_ci_low"] <= row["rho_ci_high"]
        else:
            assert math.isnan(row["spearman_rho"]) and math.isnan(row["rho_ci_low"])
        high = y[x >= HIGH_SELECTIVITY]
        assert nan_equal(row["mean_rs_high"], float(high.mean()) if len(high) else math.nan)
    assert excluded_some > 0  # the runs do exercise the exclusions


def test_hand_computed_layer(tmp_path):
    """Every row of one layer chosen by hand, the statistics worked out on paper."""
    run = hand_run(tmp_path / "run")
    _, data, table = build_report(run, tmp_path / "out", resamples=50)
    (row,) = table.to_pylist()
    assert (row["layer"], row["depth"], row["read"], row["method"]) == ("block", 1, "block", "iam")
    assert (row["units"], row["dead"], row["units_rs"], row["n_included"]) == (7, 1, 8, 3)
    assert {r: row[f"excluded_{r}"] for r in REASONS} == {
        "dead": 1, "no_response": 1, "nonfinite": 1, "no_selectivity": 1, "nan_selectivity": 1,
    }  # fmt: skip
    # included: units 0, 1, 4 with selectivity 0.1, 0.5, 0.3 and RS 0.2, 0.4, 0.6
    assert row["mean_rs"] == pytest.approx(0.4) and row["median_rs"] == pytest.approx(0.4)
    assert row["spearman_rho"] == pytest.approx(0.5)  # ranks (1, 3, 2) vs (1, 2, 3): 1 - 6*2/(3*8)
    assert math.isnan(row["mean_rs_high"]) and row["mean_rs_low"] == pytest.approx(0.2)
    # alive, finite selectivity: 0.1, 0.5, 0.9, 0.3, 0.7 (unit 5 is NaN without being dead)
    assert row["mean_selectivity"] == pytest.approx(0.5) and (row["n_high"], row["n_low"]) == (2, 1)
    assert data.catalog_source == "manifest" and [i.name for i in data.catalog] == ["stem", "block", "head"]
    assert data.coverage.missing_layers == ["stem", "head"]
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<dt>spatial reduction</dt><dd>max</dd>" in page
    assert "\\u003cb>eel\\u003c/b>" in page and "<b>eel</b>" not in page  # no '<' inside a script element


def test_crafted_edge_cases_counted(crafted_report):
    _, data, table = crafted_report
    rows = {(r["layer"], r["method"]): r for r in table.to_pylist()}
    conv1 = rows[("conv1", "am")]
    assert (conv1["dead"], conv1["excluded_dead"]) == (6, 6)
    assert conv1["excluded_no_response"] > 5  # statuses follow the sign of random activations
    assert (rows[("fc5", "am")]["excluded_no_selectivity"] + rows[("fc5", "am")]["excluded_dead"]) >= 1
    fc6 = rows[("fc6", "am")]
    assert fc6["read"] == "logits" and data.layer("fc6").signed
    assert rows[("conv2", "am")]["units"] is None and rows[("conv2", "am")]["n_included"] == 0
    assert math.isnan(rows[("conv2", "am")]["mean_rs"])  # nothing is known to be alive there
    assert [r["layer"] for r in table.to_pylist()] == ["conv1", "conv1", "conv2", "fc5", "fc5", "fc6"]
    assert [r["depth"] for r in table.to_pylist()] == [0, 0, 1, 4, 4, 5]
    assert data.catalog_source == "model registry"  # the crafted manifest has no catalog
    assert any("no layer catalog" in note for note in data.coverage.notes)


def test_bootstrap_interval_matches_a_plain_loop(crafted, crafted_report):
    """The vectorized bootstrap equals scipy.spearmanr on each resample drawn as documented."""
    _, _, table = crafted_report
    group = expected_groups(crafted)[("conv1", "am")]
    x, y = group["x"], group["y"]
    rng = bootstrap_rng(0, "conv1", "am")
    rhos = []
    for _ in range(200):
        idx = rng.integers(0, len(x), size=len(x))
        rhos.append(sps.spearmanr(x[idx], y[idx]).statistic)
    rhos = np.array(rhos)
    low, high = np.percentile(rhos[np.isfinite(rhos)], [2.5, 97.5])
    row = next(r for r in table.to_pylist() if (r["layer"], r["method"]) == ("conv1", "am"))
    assert row["rho_ci_low"] == pytest.approx(low, abs=1e-9)
    assert row["rho_ci_high"] == pytest.approx(high, abs=1e-9)
    assert row["bootstrap_resamples"] == int(np.isfinite(rhos).sum())


def test_bootstrap_seeded(crafted, tmp_path):
    data = load_run_data(open_run(crafted))
    runs = {seed: compute_stats(data, StatsOptions(seed=seed, resamples=50)) for seed in (0, 1)}
    again = pq.read_table(write_report(crafted, tmp_path, seed=0, resamples=50).parent / "stats.parquet")
    low = {name: t.column("rho_ci_low").to_numpy() for name, t in [*runs.items(), ("again", again)]}
    np.testing.assert_array_equal(low["again"], low[0])  # NaN where no rho, equal elsewhere
    assert np.nanmax(np.abs(low[0] - low[1])) > 0
    np.testing.assert_array_equal(runs[0].column("spearman_rho"), runs[1].column("spearman_rho"))
    meta = json.loads(again.schema.metadata[b"repsub_report"])
    assert meta["seed"] == 0 and meta["bootstrap_resamples"] == 50 and meta["run"] == str(crafted)
    assert meta["exclusions"] == REASONS and meta["catalog"] == "model registry"


def test_thresholds_are_options(crafted, tmp_path):
    _, _, table = build_report(crafted, tmp_path, high=0.9, low=0.05, resamples=10)
    values = np.array([v["selectivity"] for (la, _), v in stored_selectivity(crafted).items()
                       if la == "conv1" and not v["dead"]])  # fmt: skip
    row = table.to_pylist()[0]
    assert row["n_high"] == int((values >= 0.9).sum()) and row["n_low"] == int((values <= 0.05).sum())
    with pytest.raises(UsageError, match="--low"):
        write_report(crafted, tmp_path, high=0.1, low=0.5)
    with pytest.raises(UsageError, match="--resamples"):
        write_report(crafted, tmp_path, resamples=0)


# ---------------------------------------------------------------- figures


def _png_ok(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert np.asarray(img.convert("L")).std() > 1  # something drawn, not a blank canvas


def test_figures_named_by_what_they_show(real_report):
    html_path, _, _ = real_report
    figures = html_path.parent / "figures"
    names = sorted(p.name for p in figures.glob("*.png"))
    expected = {"rho_by_depth.png"}
    for layer in ("conv1", "fc5", "fc6"):
        expected |= {f"rs_vs_selectivity_{layer}.png", f"histograms_{layer}.png"}
    assert expected <= set(names)
    assert len([n for n in names if n.startswith("substitutes_")]) == 1
    assert len(names) == len(expected) + 1
    for name in names:
        _png_ok(figures / name)


def test_grid_shows_the_units_with_higher_activation(real, tmp_path):
    data = load_run_data(open_run(real))
    layer, unit, method = choose_grid_unit(data, StatsOptions(), "fc5:7")
    assert (layer, unit, method) == ("fc5", 7, "iam")
    path, choice = substitution_grid(data, layer, unit, method, tmp_path / "grid.png")
    _png_ok(path)
    t = pq.read_table(next((real / "units" / "layer=fc5").glob("iam-*.parquet"))).to_pydict()
    row = t["unit"].index(7)
    acts = np.array(t["layer_activations"][row])
    assert sorted(choice.higher) == sorted(np.flatnonzero(acts > acts[7]).tolist())
    assert len(choice.higher) == round(t["rs"][row] * len(acts))
    assert choice.shown_missing == []
    # The default choice: an included unit (status ok, alive) that others substitute (RS > 0).
    d_layer, d_unit, d_method = choose_grid_unit(data, StatsOptions(), None)
    rows = data.rows[(d_layer, d_method)]
    i = int(np.flatnonzero(rows.indices == d_unit)[0])
    assert d_method == "iam" and rows.rs[i] > 0 and rows.reason[i] is None
    with pytest.raises(RunError, match=re.escape(str(real))):
        choose_grid_unit(data, StatsOptions(), "fc5:999")
    with pytest.raises(UsageError, match="LAYER:UNIT"):
        choose_grid_unit(data, StatsOptions(), "fc5")
    with pytest.raises(RunError, match="fc5:999"):  # checked before anything is written
        write_report(real, tmp_path / "not-written", unit="fc5:999")
    assert not (tmp_path / "not-written").exists()


# ---------------------------------------------------------------- the page's static content in Chromium

STATIC_CHECK = """(() => {
  const images = Array.from(document.querySelectorAll("img.figure"));
  return {
    figures: images.length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).length,
    rows: document.querySelectorAll("#layer-stats tbody tr").length,
    signed: document.querySelectorAll("#layer-stats tbody tr.signed").length,
    coverage: document.querySelectorAll("#coverage li").length,
    explorer: !!window.repsubExplorer,
    leftOut: Array.from(document.querySelectorAll("#layer-stats td.left-out")).map((c) => c.textContent),
  };
})()"""


def test_html_report_in_chromium(real_report, browser, tmp_path):
    html_path, data, table = real_report
    page = html_path.read_text(encoding="utf-8")
    # Self-contained: no external resource of any kind.
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "<link" not in page and "@import" not in page
    assert page.count('src="data:image/png;base64,') == len(
        list((html_path.parent / "figures").glob("*.png"))
    )
    browser.open(html_path.as_uri())
    found = browser.evaluate(STATIC_CHECK)
    assert found["figures"] == 8 and found["broken"] == 0 and found["explorer"]
    assert found["rows"] == table.num_rows == 6
    assert found["signed"] == 2  # fc6 (logits), AM and IAM
    # The left-out cells say how many and why, as the table does.
    for cell, row in zip(found["leftOut"], table.to_pylist(), strict=True):
        total = sum(row[f"excluded_{r}"] for r in REASONS)
        assert cell.startswith(str(total))
        for reason in REASONS:
            if row[f"excluded_{reason}"]:
                assert f"{reason.replace('_', ' ')} {row[f'excluded_{reason}']}" in cell
    shot = browser.screenshot(tmp_path / "shot.png")
    with Image.open(shot) as img:
        assert np.asarray(img.convert("L")).std() > 5


# ---------------------------------------------------------------- partial, selectivity-only and empty runs


def test_partial_run_reports_what_is_missing(crafted_report, browser):
    html_path, data, table = crafted_report
    cov = data.coverage
    assert cov.missing_layers == ["conv3", "conv4"]
    assert cov.missing_units["selectivity"]["fc5"] == list(range(40, 128))
    assert cov.missing_units["selectivity"]["conv2"] == list(range(64))
    assert cov.missing_units["am"]["conv2"] == list(range(16, 64))
    assert cov.missing_units["iam"]["conv1"] == list(range(32, 64))
    assert "fc6" in cov.missing_units["iam"]
    page = html_path.read_text(encoding="utf-8")
    assert "layers without any result: conv3, conv4" in page
    assert "iam: missing units: conv1 32-63" in page
    browser.open(html_path.as_uri())
    found = browser.evaluate(STATIC_CHECK)
    assert found["broken"] == 0 and found["rows"] == table.num_rows and found["coverage"] == len(cov.notes)
    assert found["signed"] == 1


def test_run_without_units_table(real, tmp_path, browser):
    run = tmp_path / "run"
    shutil.copytree(real / "selectivity", run / "selectivity")
    shutil.copy(real / "manifest.json", run / "manifest.json")
    html_path, data, table = build_report(run, tmp_path / "out")
    assert table.column("method").null_count == table.num_rows == 3
    assert any("no units table" in note for note in data.coverage.notes)
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.png"))
    assert figures == ["histograms_conv1.png", "histograms_fc5.png", "histograms_fc6.png"]
    for name in figures:
        _png_ok(tmp_path / "out" / "figures" / name)
    browser.open(html_path.as_uri())
    found = browser.evaluate(STATIC_CHECK)
    assert found == {**found, "figures": 3, "broken": 0, "rows": 3, "explorer": False}
    assert browser.evaluate("!!document.getElementById('explorer-empty')")


def test_empty_run(real, tmp_path, browser):
    run = tmp_path / "run"
    run.mkdir()
    manifest = json.loads((real / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "files": {}}))  # no file committed yet
    (run / "units" / "layer=conv1").mkdir(parents=True)  # a table directory with no file yet
    html_path, data, table = build_report(run)
    assert html_path == run / "report" / "report.html"
    stored = pq.read_table(run / "report" / "stats.parquet")
    assert stored.num_rows == 0 and stored.schema.remove_metadata() == STATS_SCHEMA
    assert data.coverage.missing_layers == ["conv1", "conv2", "conv3", "conv4", "fc5", "fc6"]
    assert "has no selectivity or units rows" in html_path.read_text(encoding="utf-8")
    browser.open(html_path.as_uri())
    found = browser.evaluate(STATIC_CHECK)
    assert found["figures"] == 0 and found["rows"] == 0


def test_failed_report_leaves_the_previous_one(crafted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_report(crafted, out, resamples=10)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "figures" / "fig1_rs_vs_selectivity_gone.png").write_bytes(b"an old name")

    def broken_page(*args, **kwargs):
        raise RuntimeError("the page could not be made")

    monkeypatch.setattr("repsub.analysis.report.render_page", broken_page)
    with pytest.raises(RuntimeError, match="could not be made"):
        write_report(crafted, out, resamples=20)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if not k.name.startswith("fig1_")} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]  # no staging folder left
    monkeypatch.undo()
    write_report(crafted, out, resamples=20)
    assert not (out / "figures" / "fig1_rs_vs_selectivity_gone.png").exists()  # old names cleaned up


# ---------------------------------------------------------------- errors and the command line


def test_path_without_run(tmp_path):
    with pytest.raises(RunError, match=re.escape(str(tmp_path / "nothing")) + ".*holds no run"):
        write_report(tmp_path / "nothing", tmp_path / "out")


def test_other_schema_version(real, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    manifest = json.loads((real / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(RunError, match=re.escape(str(run)) + ".*schema version 99"):
        write_report(run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match=re.escape(str(run)) + ".*not valid JSON"):
        write_report(run)


def test_unreadable_table_is_a_run_error(real, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real, run, ignore=shutil.ignore_patterns("report"))
    next((run / "units" / "layer=fc5").glob("am-*.parquet")).write_bytes(b"not parquet")
    with pytest.raises(RunError, match=re.escape(str(run)) + ".*units table"):
        write_report(run, tmp_path / "out")


def test_command_line(crafted, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="repsub")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(crafted)])
    assert (args.out, args.high, args.low, args.seed, args.resamples, args.unit) == (
        None, HIGH_SELECTIVITY, LOW_SELECTIVITY, 0, BOOTSTRAP_RESAMPLES, None,
    )  # fmt: skip
    out = tmp_path / "rep"
    args = parser.parse_args(
        ["report", str(crafted), "--out", str(out), "--resamples", "20", "--seed", "3", "--unit", "conv1:5"]
    )
    cmd_report(args)
    text = capsys.readouterr().out
    assert f"wrote {out / 'report.html'}" in text and "note: layers without any result: conv3, conv4" in text
    assert (out / "stats.parquet").is_file() and (out / "figures" / "substitutes_conv1_5.png").is_file()
    with pytest.raises(UsageError, match="--out"):
        write_report("s3://bucket/run")


def test_unit_ranges_read_back_as_the_same_units():
    assert ranges_text([8, 0, 1, 2, 5, 7, 1], ", ") == "0-2, 5, 7-8"
    assert ranges_text([]) == ""
    units = [0, 1, 2, 5, 7, 8, 40]
    assert parse_units(ranges_text(units), 64, "conv1") == units


def test_a_terminated_report_leaves_nothing(tmp_path):
    """SIGTERM while the report is being made: its staging folder is removed and the output directory it
    created too (the report becomes KeyboardInterrupt, so its cleanup runs)."""
    run = crafted_run(tmp_path / "run")
    out = tmp_path / "new" / "report"
    # The staging folder exists while the figures are drawn (seconds): terminated then.
    command = [sys.executable, "-m", "repsub.cli", "report", str(run), "--out", str(out)]
    report = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(out.glob(".tmp-report-*")) and report.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert report.poll() is None, "the report ended before it could be terminated"
    report.send_signal(signal.SIGTERM)
    report.communicate(timeout=120)
    assert report.returncode != 0
    assert not (tmp_path / "new").exists()  # nothing left: no staging folder, no empty directories
