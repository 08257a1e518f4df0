"""`repsub report`: statistics against scipy on the stored columns, figures, the HTML page in headless
Chromium, partial and empty runs, and the errors for paths that hold no usable run."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as sps

from repsub.errors import RunError, UsageError
from repsub.report import add_report_parser, build_report, cmd_report, write_report
from repsub.report_stats import (
    BOOTSTRAP_RESAMPLES,
    HIGH_SELECTIVITY,
    LOW_SELECTIVITY,
    STATS_SCHEMA,
    bootstrap_rng,
    format_ranges,
)
from repsub.store import RunWriter, png_bytes

IDENTITY = {"model": "shallow_cnn", "weights": "random", "weights_sha256": "0" * 64, "num_classes": 3}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


# ---------------------------------------------------------------- fixtures: tiny runs


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The real pipeline on shallow_cnn with random weights: 3 layers, every unit, AM and IAM, 2 steps."""
    from repsub import api
    from repsub.data.synthetic import make_image_folder
    from repsub.models import load_model
    from repsub.optimize import OptimSettings

    root = tmp_path_factory.mktemp("report_real")
    data = make_image_folder(root / "images", num_classes=3, images_per_class=6, size=16)
    model = load_model("shallow_cnn", weights="random", seed=0, device="cpu", num_classes=3)
    out = root / "run"
    layers = ["conv1", "fc5", "fc6"]
    api.selectivity(
        model=model, data=data, out=out, image_size=16, layers=layers, device="cpu", workers=0, progress=False
    )
    settings = OptimSettings(steps=2, image_size=16, batch_size=128)
    for method in ("am", "iam"):
        api.visualize(
            model=model,
            method=method,
            layers=layers,
            out=out,
            settings=settings,
            device="cpu",
            progress=False,
        )
    return out


def _units_rows(rng, method, units, n_layer, images=True):
    """Units rows whose RS agrees with their layer activations (as the pipeline's)."""
    acts = rng.normal(size=(len(units), n_layer)).astype(np.float32)
    own = acts[np.arange(len(units)), units]
    rs = (acts > own[:, None]).sum(axis=1) / n_layer
    pictures = [png_bytes(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)) for _ in units]
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


def _selectivity_rows(units, values, dead):
    n = len(units)
    return pa.table({
        "unit": pa.array(units, pa.int32()),
        "selectivity": pa.array(values, pa.float64()),
        "top_class": pa.array(np.where(dead, -1, 0), pa.int32()),
        "class_means": pa.array([[0.0, 0.0, 0.0]] * n, pa.list_(pa.float64())),
        "n_images": pa.array(np.full(n, 12), pa.int64()),
        "dead": pa.array(dead, pa.bool_()),
    })  # fmt: skip


@pytest.fixture(scope="module")
def crafted_run(tmp_path_factory):
    """A run written through the store with chosen edge cases: dead units, a NaN (not dead) logit,
    negative logit selectivity, RS rows without a selectivity row, a layer with RS only, missing units."""
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("report_crafted") / "run"
    writer = RunWriter(out)
    # conv1: 64 units, 6 dead (NaN), several above the high threshold.
    sel = rng.uniform(0, 1, 64)
    dead = np.zeros(64, bool)
    dead[[3, 10, 11, 20, 40, 63]] = True
    sel[dead] = np.nan
    writer.write_selectivity("conv1", _selectivity_rows(np.arange(64), sel, dead))
    # fc5: only units 0-39 measured.
    writer.write_selectivity(
        "fc5", _selectivity_rows(np.arange(40), rng.uniform(0, 0.7, 40), np.zeros(40, bool))
    )
    # fc6 (logits): negative and > 1 selectivity, one NaN that is not dead.
    writer.write_selectivity(
        "fc6", _selectivity_rows(np.arange(3), np.array([-0.4, np.nan, 1.7]), np.zeros(3, bool))
    )
    writer.record("selectivity", IDENTITY, {})
    writer.write_units("am", "conv1", _units_rows(rng, "am", np.arange(64), 64))
    writer.write_units("iam", "conv1", _units_rows(rng, "iam", np.arange(32), 64))
    # fc5: 0-29 matched, 100-109 have no selectivity row.
    writer.write_units("am", "fc5", _units_rows(rng, "am", np.r_[0:30, 100:110], 128))
    writer.write_units("iam", "fc5", _units_rows(rng, "iam", np.arange(30), 128))
    writer.write_units("am", "fc6", _units_rows(rng, "am", np.arange(3), 3))
    # conv2: RS but no selectivity at all.
    writer.write_units("am", "conv2", _units_rows(rng, "am", np.arange(16), 64))
    writer.record("visualize/am", IDENTITY, {})
    writer.record("visualize/iam", IDENTITY, {})
    return out


# ---------------------------------------------------------------- an independent reading of the stored columns


def stored_columns(run: Path) -> tuple[dict, dict]:
    """{layer: {unit: (selectivity, dead)}} and {(layer, method): {unit: rs}}, straight from the Parquet files."""
    sel, rs = {}, {}
    for path in sorted(run.glob("selectivity/layer=*/*.parquet")):
        layer = path.parent.name.removeprefix("layer=")
        t = pq.read_table(path).to_pydict()
        sel[layer] = {u: (s, d) for u, s, d in zip(t["unit"], t["selectivity"], t["dead"], strict=True)}
    for path in sorted(run.glob("units/layer=*/*.parquet")):
        layer = path.parent.name.removeprefix("layer=")
        t = pq.read_table(path, columns=["method", "unit", "rs"]).to_pydict()
        for m, u, r in zip(t["method"], t["unit"], t["rs"], strict=True):
            rs.setdefault((layer, m), {})[u] = r
    return sel, rs


def expected_pairs(sel: dict, rs: dict, layer: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    layer_sel = sel.get(layer, {})
    pairs = [
        (layer_sel[u][0], r)
        for u, r in sorted(rs[(layer, method)].items())
        if u in layer_sel
        and not layer_sel[u][1]
        and layer_sel[u][0] is not None
        and not math.isnan(layer_sel[u][0])
    ]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def nan_equal(a, b, tol=1e-12) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@pytest.fixture(scope="module")
def crafted_report(crafted_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("crafted_report")
    path, data, table = build_report(crafted_run, out, resamples=200)
    return path, data, table


@pytest.fixture(scope="module")
def real_report(real_run):
    return build_report(real_run)  # default output directory: RUN/report


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("which", ["crafted_report", "real_report"])
def test_statistics_equal_scipy_on_stored_columns(which, request):
    html_path, _, _ = request.getfixturevalue(which)
    run = html_path.parent.parent if which == "real_report" else request.getfixturevalue("crafted_run")
    sel, rs = stored_columns(run)
    written = pq.read_table(html_path.parent / "stats.parquet")
    assert written.schema.remove_metadata() == STATS_SCHEMA
    rows = {(r["layer"], r["method"]): r for r in written.to_pylist()}
    assert len(rows) == written.num_rows  # one row per (layer, method)
    expected_keys = set(rs) | {(layer, None) for layer in sel if not any(k[0] == layer for k in rs)}
    assert set(rows) == expected_keys
    for (layer, method), row in rows.items():
        values = np.array([s for s, d in sel.get(layer, {}).values() if not d and s is not None], dtype=float)
        values = values[~np.isnan(values)]
        assert row["units"] == (len(sel[layer]) if layer in sel else None)
        if layer in sel:
            assert row["dead"] == sum(d for _, d in sel[layer].values())
            assert nan_equal(row["mean_selectivity"], float(np.mean(values)) if len(values) else math.nan)
            assert nan_equal(row["median_selectivity"], float(np.median(values)) if len(values) else math.nan)
            assert row["n_high"] == int((values >= HIGH_SELECTIVITY).sum())
            assert row["n_low"] == int((values <= LOW_SELECTIVITY).sum())
        if method is None:
            assert row["spearman_rho"] is None and row["units_rs"] is None
            continue
        r = np.array(list(rs[(layer, method)].values()))
        assert row["units_rs"] == len(r)
        assert nan_equal(row["mean_rs"], float(np.mean(r)))
        assert nan_equal(row["median_rs"], float(np.median(r)))
        x, y = expected_pairs(sel, rs, layer, method)
        assert row["n_spearman"] == len(x)
        assert (
            row["units_rs"]
            == row["n_spearman"] + row["excluded_dead"] + row["excluded_nan"] + row["unmatched"]
        )
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            ref = sps.spearmanr(x, y)
            assert row["spearman_rho"] == pytest.approx(ref.statistic, abs=1e-12)
            assert row["spearman_p"] == pytest.approx(ref.pvalue, rel=1e-9)
            assert row["rho_ci_low"] <= row["rho_ci_high"]
        else:
            assert math.isnan(row["spearman_rho"]) and math.isnan(row["rho_ci_low"])
        high = y[x >= HIGH_SELECTIVITY]
        assert nan_equal(row["mean_rs_high"], float(high.mean()) if len(high) else math.nan)


def test_crafted_edge_cases_counted(crafted_report):
    _, data, table = crafted_report
    rows = {(r["layer"], r["method"]): r for r in table.to_pylist()}
    conv1 = rows[("conv1", "am")]
    assert (conv1["dead"], conv1["excluded_dead"], conv1["n_spearman"]) == (6, 6, 58)
    # iam covers units 0-31 only: dead 3, 10, 11, 20 among them.
    assert (rows[("conv1", "iam")]["excluded_dead"], rows[("conv1", "iam")]["n_spearman"]) == (4, 28)
    assert (rows[("fc5", "am")]["unmatched"], rows[("fc5", "am")]["n_spearman"]) == (10, 30)
    fc6 = rows[("fc6", "am")]
    assert fc6["after_relu"] is False and fc6["excluded_nan"] == 1 and fc6["n_spearman"] == 2
    assert math.isnan(fc6["spearman_rho"])  # 2 pairs: too few
    assert rows[("conv2", "am")]["units"] is None and rows[("conv2", "am")]["unmatched"] == 16
    assert [r["layer"] for r in table.to_pylist()] == ["conv1", "conv1", "conv2", "fc5", "fc5", "fc6"]
    assert [r["depth"] for r in table.to_pylist()] == [0, 0, 1, 4, 4, 5]
    assert rows[("conv1", "am")]["bootstrap_resamples"] == 200


def test_bootstrap_interval_matches_a_plain_loop(crafted_run, crafted_report):
    """The vectorized bootstrap equals scipy.spearmanr on each resample drawn as documented."""
    _, data, table = crafted_report
    sel, rs = stored_columns(crafted_run)
    x, y = expected_pairs(sel, rs, "conv1", "am")
    rng = bootstrap_rng(0, "conv1", "am")
    rhos = []
    for _ in range(200):
        idx = rng.integers(0, len(x), size=len(x))
        rhos.append(sps.spearmanr(x[idx], y[idx]).statistic)
    low, high = np.percentile(rhos, [2.5, 97.5])
    row = next(r for r in table.to_pylist() if (r["layer"], r["method"]) == ("conv1", "am"))
    assert row["rho_ci_low"] == pytest.approx(low, abs=1e-9)
    assert row["rho_ci_high"] == pytest.approx(high, abs=1e-9)


def test_bootstrap_seeded(crafted_run, tmp_path):
    from repsub.report_stats import StatsOptions, layer_method_stats, load_run_data, open_report_run

    data = load_run_data(open_report_run(crafted_run))
    runs = {seed: layer_method_stats(data, StatsOptions(seed=seed, resamples=50)) for seed in (0, 1)}
    again = pq.read_table(write_report(crafted_run, tmp_path, seed=0, resamples=50).parent / "stats.parquet")
    low = {name: t.column("rho_ci_low").to_numpy() for name, t in [*runs.items(), ("again", again)]}
    np.testing.assert_array_equal(low["again"], low[0])  # NaN where no rho, equal elsewhere
    assert np.nanmax(np.abs(low[0] - low[1])) > 0
    np.testing.assert_array_equal(runs[0].column("spearman_rho"), runs[1].column("spearman_rho"))
    meta = json.loads(again.schema.metadata[b"repsub_report"])
    assert meta["seed"] == 0 and meta["bootstrap_resamples"] == 50 and meta["run"] == str(crafted_run)


def test_thresholds_are_options(crafted_run, tmp_path):
    _, _, table = build_report(crafted_run, tmp_path, high=0.9, low=0.05, resamples=10)
    sel, _ = stored_columns(crafted_run)
    values = np.array([s for s, d in sel["conv1"].values() if not d])
    row = table.to_pylist()[0]
    assert row["n_high"] == int((values >= 0.9).sum()) and row["n_low"] == int((values <= 0.05).sum())
    with pytest.raises(UsageError, match="--low"):
        write_report(crafted_run, tmp_path, high=0.1, low=0.5)


# ---------------------------------------------------------------- figures


def _png_ok(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert np.asarray(img.convert("L")).std() > 1  # something drawn, not a blank canvas


def test_figures_written(real_report):
    html_path, data, _ = real_report
    figures = html_path.parent / "figures"
    names = sorted(p.name for p in figures.glob("*.png"))
    expected = {"fig2_rho_vs_depth.png"}
    for layer in ("conv1", "fc5", "fc6"):
        expected |= {f"fig1_rs_vs_selectivity_{layer}.png", f"fig4_hist_{layer}.png"}
    assert expected <= set(names)
    grids = [n for n in names if n.startswith("fig3_grid_")]
    assert len(grids) == 1
    for name in names:
        _png_ok(figures / name)


def test_grid_shows_the_units_with_higher_activation(real_run, tmp_path):
    from repsub.report_figures import choose_grid_unit, substitution_grid
    from repsub.report_stats import StatsOptions, load_run_data, open_report_run

    data = load_run_data(open_report_run(real_run))
    layer, unit, method = choose_grid_unit(data, StatsOptions(), "fc5:7")
    assert (layer, unit, method) == ("fc5", 7, "iam")
    path, choice = substitution_grid(data, layer, unit, method, tmp_path / "grid.png")
    _png_ok(path)
    t = pq.read_table(next((real_run / "units" / "layer=fc5").glob("iam-*.parquet"))).to_pydict()
    row = t["unit"].index(7)
    acts = np.array(t["layer_activations"][row])
    assert sorted(choice.higher) == sorted(np.flatnonzero(acts > acts[7]).tolist())
    assert len(choice.higher) == round(t["rs"][row] * len(acts))
    assert choice.shown_missing == []
    # The default choice: a unit that others substitute (RS > 0).
    default = choose_grid_unit(data, StatsOptions(), None)
    assert default[2] == "iam" and data.rs[(default[0], "iam")].rs[default[1]] > 0
    with pytest.raises(RunError, match=re.escape(str(real_run))):
        choose_grid_unit(data, StatsOptions(), "fc5:999")
    with pytest.raises(UsageError, match="LAYER:UNIT"):
        choose_grid_unit(data, StatsOptions(), "fc5")
    with pytest.raises(RunError, match="fc5:999"):  # checked before anything is written
        write_report(real_run, tmp_path / "not-written", unit="fc5:999")
    assert not (tmp_path / "not-written").exists()


# ---------------------------------------------------------------- the HTML page in headless Chromium

CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const out = document.createElement("pre");
  out.id = "report-check";
  out.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).length,
    rows: document.querySelectorAll("#layer-stats tbody tr").length,
    logits: document.querySelectorAll("#layer-stats tbody tr.logits").length,
    coverage: document.querySelectorAll("#coverage li").length,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # No skip: the set-up (scripts/setup.sh) installs Chromium, so its absence is a failure to report.
    assert CHROMIUM is not None, (
        "chromium is not installed: run scripts/setup.sh (it installs Debian's chromium)"
    )
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60)


def browser_check(html_path: Path, tmp_path: Path) -> dict:
    """Open a copy of the page with a load-time script that writes what it found into the DOM."""
    page = html_path.read_text(encoding="utf-8")
    harness = tmp_path / "harness.html"
    harness.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    done = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", harness.as_uri())
    found = re.search(r'<pre id="report-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"no check output; stderr: {done.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def screenshot(html_path: Path, tmp_path: Path) -> Path:
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, "--window-size=1280,2000", f"--screenshot={shot}", html_path.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as img:
        assert img.size == (1280, 2000) and np.asarray(img.convert("L")).std() > 5
    return shot


def test_html_report_in_chromium(real_report, tmp_path):
    html_path, data, table = real_report
    page = html_path.read_text(encoding="utf-8")
    # Self-contained: no external resource of any kind.
    assert not re.search(r'(src|href)="(?!data:)', page) and "<link" not in page
    assert page.count('src="data:image/png;base64,') == len(
        list((html_path.parent / "figures").glob("*.png"))
    )
    found = browser_check(html_path, tmp_path)
    assert found["images"] == 8 and found["broken"] == 0
    assert found["rows"] == table.num_rows == 6
    assert found["logits"] == 2  # fc6, AM and IAM
    screenshot(html_path, tmp_path)


# ---------------------------------------------------------------- partial, selectivity-only and empty runs


def test_partial_run_reports_what_is_missing(crafted_report, tmp_path):
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
    found = browser_check(html_path, tmp_path)
    assert found["broken"] == 0 and found["rows"] == table.num_rows and found["coverage"] == len(cov.notes)
    assert found["logits"] == 1


def test_run_without_units_table(real_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run / "selectivity", run / "selectivity")
    shutil.copy(real_run / "manifest.json", run / "manifest.json")
    html_path, data, table = build_report(run, tmp_path / "out")
    assert table.column("method").null_count == table.num_rows == 3
    assert any("no units table" in note for note in data.coverage.notes)
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.png"))
    assert figures == ["fig4_hist_conv1.png", "fig4_hist_fc5.png", "fig4_hist_fc6.png"]
    for name in figures:
        _png_ok(tmp_path / "out" / "figures" / name)
    found = browser_check(html_path, tmp_path)
    assert found == {**found, "images": 3, "broken": 0, "rows": 3}


def test_empty_run(real_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(real_run / "manifest.json", run / "manifest.json")
    (run / "units" / "layer=conv1").mkdir(parents=True)  # a table directory with no file yet
    html_path, data, table = build_report(run)
    assert html_path == run / "report" / "report.html"
    stored = pq.read_table(run / "report" / "stats.parquet")
    assert stored.num_rows == 0 and stored.schema.remove_metadata() == STATS_SCHEMA
    assert data.coverage.missing_layers == ["conv1", "conv2", "conv3", "conv4", "fc5", "fc6"]
    assert "has no selectivity or units rows" in html_path.read_text(encoding="utf-8")
    found = browser_check(html_path, tmp_path)
    assert found["images"] == 0 and found["rows"] == 0


# ---------------------------------------------------------------- errors and the command line


def test_path_without_run(tmp_path):
    with pytest.raises(RunError, match=re.escape(str(tmp_path / "nothing")) + ".*holds no run"):
        write_report(tmp_path / "nothing", tmp_path / "out")


def test_other_schema_version(real_run, tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    manifest = json.loads((real_run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(RunError, match=re.escape(str(run)) + ".*schema version 99"):
        write_report(run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match=re.escape(str(run)) + ".*not valid JSON"):
        write_report(run)


def test_unreadable_table_is_a_run_error(real_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_run, run, ignore=shutil.ignore_patterns("report"))
    next((run / "units" / "layer=fc5").glob("am-*.parquet")).write_bytes(b"not parquet")
    with pytest.raises(RunError, match=re.escape(str(run)) + ".*units table"):
        write_report(run, tmp_path / "out")


def test_command_line(crafted_run, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="repsub")
    add_report_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(crafted_run)])
    assert (args.out, args.high, args.low, args.seed, args.resamples, args.unit) == (
        None, HIGH_SELECTIVITY, LOW_SELECTIVITY, 0, BOOTSTRAP_RESAMPLES, None,
    )  # fmt: skip
    out = tmp_path / "rep"
    args = parser.parse_args(
        [
            "report",
            str(crafted_run),
            "--out",
            str(out),
            "--resamples",
            "20",
            "--seed",
            "3",
            "--unit",
            "conv1:5",
        ]
    )
    cmd_report(args)
    text = capsys.readouterr().out
    assert f"wrote {out / 'report.html'}" in text and "note: layers without any result: conv3, conv4" in text
    assert (out / "stats.parquet").is_file() and (out / "figures" / "fig3_grid_conv1_5.png").is_file()
    with pytest.raises(UsageError, match="--out"):
        write_report("s3://bucket/run")


def test_format_ranges():
    assert format_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert format_ranges([]) == ""
