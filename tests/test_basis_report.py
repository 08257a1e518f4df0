"""Summary, report, statistics and explorer of a run with the units and a basis side by side (issue 18).

A run of the shallow CNN on tiny data: conv2's units and the directions of a pca basis fitted to it, each with
selectivity, AM/IAM (RS) and importance rows. Every number shown per (layer, basis) is recomputed here from
that basis's stored rows alone (scipy's Spearman, numpy means); a v2 run reports as before."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats

import repsub
from repsub.analysis.report import build_report
from repsub.analysis.summary import run_summaries, summary_rows
from tests.chromium import Chromium
from tests.cli_helpers import run_cli
from tests.report_helpers import crafted_run
from tests.test_basis_schema import strip_to_v2
from tests.test_directions import SETTINGS, _same

UNITS = "0-11"


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder_dir, shallow_random):
    out = tmp_path_factory.mktemp("basis-report") / "run"
    common = {"model": shallow_random, "out": out, "progress": False}
    data = {"data": image_folder_dir, "workers": 0}
    repsub.selectivity(**common, **data, layers=["conv2", "fc5"], precision="fp32")
    repsub.fit_basis(out, layers=["conv2"], kind="pca", size=12, positions=6, workers=0, seed=0)
    repsub.selectivity(**common, **data, layers=["conv2", "fc5"], basis="unit,pca", precision="fp32")
    for basis in ("unit", "pca"):
        for method in ("am", "iam"):
            repsub.visualize(
                **common, method=method, layers=["conv2"], units=UNITS, basis=basis, settings=SETTINGS
            )
        repsub.importance(**common, **data, layers=["conv2"], units=UNITS, basis=basis)
    return out


def expected(run_dir, layer: str, basis: str) -> dict:
    """The side-by-side numbers of (layer, basis), from that basis's stored rows only."""
    run = repsub.open_run(run_dir)
    sel = [r for r in run.table("selectivity").to_pylist() if r["layer"] == layer and r["basis"] == basis]
    alive = np.array([r["selectivity"] for r in sel if not r["dead"] and math.isfinite(r["selectivity"])])
    found = {"targets": len(sel), "mean_selectivity": alive.mean()}
    by_unit = {r["unit"]: r for r in sel}
    for method in ("am", "iam"):
        rows = [r for r in run.table("units").to_pylist()
                if (r["layer"], r["basis"], r["method"]) == (layer, basis, method)]  # fmt: skip
        pairs = [(by_unit[r["unit"]]["selectivity"], r["rs"]) for r in rows
                 if r["status"] == "ok" and r["unit"] in by_unit and not by_unit[r["unit"]]["dead"]
                 and math.isfinite(by_unit[r["unit"]]["selectivity"]) and math.isfinite(r["rs"])]  # fmt: skip
        x, y = np.array(pairs).T
        found[f"n_{method}"] = len(pairs)
        found[f"mean_rs_{method}"] = y.mean()
        found[f"rho_{method}"] = scipy_stats.spearmanr(x, y).statistic
    drops = [r["accuracy_drop"] for r in run.table("importance").to_pylist()
             if (r["layer"], r["basis"], r["ablation"]) == (layer, basis, "zero")]  # fmt: skip
    found["drop_zero"] = float(np.mean(drops))
    return found


def test_summary_shows_each_basis_from_its_own_rows(run, capsys):
    units, _, _, bases = run_summaries(repsub.open_run(run), with_bases=True)
    assert [(line["layer"], line["basis"]) for line in bases] == [("conv2", "unit"), ("conv2", "pca"),
                                                                   ("fc5", "unit")]  # fmt: skip
    for line in bases[:2]:
        for key, value in expected(run, "conv2", line["basis"]).items():
            assert line[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (line["basis"], key)
    assert bases[0]["targets"] == 64 and bases[1]["targets"] == 12
    listed = repsub.list_bases(run).to_pylist()[0]
    assert (
        bases[1]["kind"] == "pca" and bases[1]["fve"] == listed["fve"] and bases[1]["l0"] == listed["mean_l0"]
    )
    assert bases[1]["stability"] == listed["stability"] and "fve" not in bases[0]
    # The units' own summary is untouched by the basis: its conv2 line is the side-by-side unit line.
    conv2 = next(line for line in units if line["layer"] == "conv2")
    assert conv2["mean_rs_iam"] == bases[0]["mean_rs_iam"] and conv2["spearman_am"] == bases[0]["rho_am"]
    code, out = run_cli(capsys, "summary", run)
    assert code == 0 and "bases side by side" in out
    assert re.search(r"conv2\s+pca\s+12\s", out)


def test_report_and_stats_carry_every_basis_apart(run, tmp_path):
    page, _, stats = build_report(run, tmp_path / "report", resamples=20)
    written = pq.read_table(tmp_path / "report" / "stats.parquet")
    assert written.column("basis").to_pylist() == stats.column("basis").to_pylist()
    assert set(zip(stats["layer"].to_pylist(), stats["basis"].to_pylist(), stats["method"].to_pylist(),
                   strict=True)) == {("conv2", "unit", "am"), ("conv2", "unit", "iam"), ("conv2", "pca", "am"),
                                     ("conv2", "pca", "iam"), ("fc5", "unit", None)}  # fmt: skip
    pca_iam = next(row for row in stats.to_pylist() if (row["basis"], row["method"]) == ("pca", "iam"))
    want = expected(run, "conv2", "pca")
    assert pca_iam["spearman_rho"] == pytest.approx(want["rho_iam"], rel=1e-12)
    assert pca_iam["units"] == 12 and pca_iam["n_included"] == want["n_iam"]
    assert (tmp_path / "report" / "figures" / "rho_by_depth_bases.png").is_file()
    again = repsub.open_run(run).stats(resamples=20)
    assert again.equals(stats)
    html = page.read_text()
    table = html[
        html.index('<table id="bases-table">') : html.index("</table>", html.index('id="bases-table"'))
    ]
    assert table.count("<tr data-layer=") == 3 and 'data-layer="conv2" data-basis="pca"' in table
    assert (
        f"<td>{want['mean_selectivity']:.3f}</td>" in table and f"<td>{want['drop_zero']:.3f}</td>" in table
    )
    # The explorer offers the bases as a filter, and holds the directions' rows beside the units'.
    assert re.search(r'<select id="f-basis"[^>]*>.*<option value="0">unit</option>.*'
                     r'<option value="1">pca</option>', html, re.S)  # fmt: skip


def test_a_v2_run_reports_as_before(tmp_path):
    crafted = crafted_run(tmp_path / "v3")
    shutil.copytree(crafted, tmp_path / "v2")
    strip_to_v2(tmp_path / "v2")
    results = {}
    for name in ("v3", "v2"):
        page, _, stats = build_report(tmp_path / name, tmp_path / f"report-{name}", resamples=20)
        units, importance, index, bases = run_summaries(repsub.open_run(tmp_path / name), with_bases=True)
        assert (
            bases == []
            and 'id="bases-table"' not in page.read_text()
            and 'id="f-basis"' not in page.read_text()
        )
        assert set(stats.column("basis").to_pylist()) == {"unit"}
        assert not (tmp_path / f"report-{name}" / "figures" / "rho_by_depth_bases.png").exists()
        results[name] = (stats.drop_columns(["basis"]), units)
    assert _same(results["v2"][0], results["v3"][0]) and plain(results["v2"][1]) == plain(results["v3"][1])
    assert plain(results["v2"][1]) == plain(summary_rows(repsub.open_run(tmp_path / "v2").stats(resamples=0)))


def plain(value):
    """`value` with NaN spelled out, so that equal results compare equal."""
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    return [plain(v) for v in value] if isinstance(value, list) else value


def test_the_explorer_filters_by_basis(run, tmp_path):
    page = build_report(run, tmp_path / "report", resamples=20)[0]
    stored = {
        (r["basis"], r["method"], r["unit"]): r["rs"] for r in repsub.open_run(run).table("units").to_pylist()
    }
    with Chromium(width=1280, height=1000) as browser:
        browser.open(page.as_uri())
        assert browser.evaluate("window.repsubExplorer.ready") is True
        assert len(browser.evaluate("window.repsubExplorer.filtered()")) == len(stored) == 48
        for code, basis in enumerate(("unit", "pca")):
            browser.evaluate(f"""(() => {{ const s = document.getElementById("f-basis"); s.value = "{code}";
                s.dispatchEvent(new Event("input", {{bubbles: true}})); }})()""")
            rows = browser.evaluate("window.repsubExplorer.filtered()")
            described = [browser.evaluate(f"window.repsubExplorer.describe({r})") for r in rows]
            assert len(rows) == 24 and {d["basis"] for d in described} == {basis}
            for d in described:  # the page rounds to 4 significant digits
                assert d["rs"] == pytest.approx(stored[(basis, d["method"], d["unit"])], rel=1e-3, abs=1e-12)
        browser.evaluate(f"document.querySelector('#gallery .card[data-row=\"{rows[0]}\"]').click()")
        title = browser.evaluate("document.getElementById('detail-title').textContent")
        assert re.fullmatch(r"conv2 pca direction \d+", title)
