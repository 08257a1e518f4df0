"""The interpretability index in the analysis (issue 19): its per-layer mean and Spearman rho against RS and
selectivity equal to numpy and scipy on the stored columns, with the exclusions of importance (the same rules,
read independently), the summary's table, the report's table, figures and file, and the explorer's exemplar
strips (each unit's first top and bottom exemplars, each distinct image embedded once)."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as sps

import repsub
from repsub import cli
from repsub.analysis.exclusion import INTERPRETABILITY_REASONS
from repsub.analysis.exemplar_strips import STRIP, exemplar_side
from repsub.analysis.interpretability_stats import INTERPRETABILITY_STATS_FILE
from repsub.analysis.report import build_report
from repsub.runstore.writer import RunWriter
from tests.importance_helpers import expected_importance_reason, importance_run
from tests.report_helpers import stored_selectivity, stored_units

RESAMPLES = 100
K = 10  # exemplars per side in the run (more than the strip shows)


def index_rows(rng, units, similarity: str) -> pa.Table:
    index = rng.uniform(0.4, 1.0, len(units))
    if similarity == "labels":
        index[2] = math.nan  # a unit whose index is not a number: left out as nan_index
    return pa.table({
        "unit": pa.array(units, pa.int32()),
        "similarity": pa.array([similarity] * len(units)),
        "variant": pa.array(["extremal"] * len(units)),
        "index": pa.array(index, pa.float64()),
        "trials": pa.array(np.full(len(units), 20), pa.int32()),
        "seed": pa.array(np.zeros(len(units)), pa.int64()),
    })  # fmt: skip


def jpeg(rng) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = importance_run(tmp_path_factory.mktemp("interp") / "run")
    rng = np.random.default_rng(19)
    writer = RunWriter(out)
    for layer, units in (("conv", np.arange(48)), ("fc", np.arange(30))):
        for similarity in ("labels", "pixels"):
            writer.write_table("interpretability", layer, index_rows(rng, units, similarity))
    # Exemplars of conv: each unit's K top and bottom images among 60; images 0-49 have thumbnails.
    rows = {name: [] for name in ("unit", "side", "rank", "image_index", "label", "activation")}
    for unit in range(48):
        for side in ("top", "bottom"):
            for rank, index in enumerate(rng.choice(60, K, replace=False)):
                for name, value in zip(rows, (unit, side, rank, int(index), int(index) % 4, 1.0 - rank),
                                       strict=True):  # fmt: skip
                    rows[name].append(value)
    writer.write_table("exemplars", "conv", pa.table(rows))
    writer.write_whole_table("images", pa.table({
        "image_index": pa.array(range(50), pa.int64()), "label": pa.array([i % 4 for i in range(50)], pa.int32()),
        "image": pa.array([jpeg(rng) for _ in range(50)], pa.binary()), "source": pa.array(["gen"] * 50),
    }))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory):
    return build_report(run_dir, tmp_path_factory.mktemp("interp_report"), resamples=RESAMPLES)


def stored_index(run_dir) -> dict[tuple, float]:
    found = {}
    for path in run_dir.glob("interpretability/layer=*/*.parquet"):
        layer = path.parent.name.removeprefix("layer=")
        for row in pq.read_table(path).to_pylist():
            found[(layer, row["similarity"], row["unit"])] = row["index"]
    return found


def test_statistics_equal_scipy_on_stored_columns(run_dir, report):
    stats = pq.read_table(report[0].parent / INTERPRETABILITY_STATS_FILE).to_pylist()
    index, sel, units = stored_index(run_dir), stored_selectivity(run_dir), stored_units(run_dir)
    assert {(r["layer"], r["similarity"]) for r in stats} == {
        (layer, s) for layer in ("conv", "fc") for s in ("labels", "pixels")
    }
    assert len(stats) == 4 * 3  # against rs_am, rs_iam, selectivity
    for row in stats:
        mine = {u: v for (layer, s, u), v in index.items() if (layer, s) == (row["layer"], row["similarity"])}
        finite = [v for v in mine.values() if math.isfinite(v)]
        assert row["units"] == len(mine) and row["n_index"] == len(finite)
        assert row["mean_index"] == pytest.approx(np.mean(finite), abs=1e-12)
        reasons = dict.fromkeys(INTERPRETABILITY_REASONS, 0)
        x, y = [], []
        for unit, value in sorted(mine.items()):
            s = sel.get((row["layer"], unit))
            u = (
                None
                if row["against"] == "selectivity"
                else units.get((row["layer"], row["against"][3:], unit))
            )
            reason = expected_importance_reason(
                {"accuracy_drop": value, "loss_increase": 0.0}, s, u, row["against"]
            )
            if reason is not None:
                reasons["nan_index" if reason == "nan_importance" else reason] += 1
                continue
            x.append(value)
            y.append(s["selectivity"] if row["against"] == "selectivity" else u["rs"])
        assert {r: row[f"excluded_{r}"] for r in reasons} == reasons
        assert row["n_included"] == len(x) and row["units"] == len(x) + sum(reasons.values())
        expected = sps.spearmanr(x, y)
        assert row["spearman_rho"] == pytest.approx(expected.statistic, abs=1e-12)
        assert row["spearman_p"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert row["rho_ci_low"] <= row["spearman_rho"] <= row["rho_ci_high"]
        assert row["bootstrap_resamples"] == RESAMPLES
    conv = [r for r in stats if r["layer"] == "conv" and r["similarity"] == "labels"]
    assert all(r["excluded_nan_index"] == 1 for r in conv if r["against"] == "selectivity")  # unit 2's NaN


def test_summary_and_run_api_agree_with_the_report(run_dir, report, capsys):
    stats = pq.read_table(report[0].parent / INTERPRETABILITY_STATS_FILE)
    api = repsub.open_run(run_dir).interpretability_stats(resamples=RESAMPLES)
    assert api.column("spearman_rho").to_pylist() == stats.column("spearman_rho").to_pylist()
    assert cli.main(["summary", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    table = printed.split("index: the 2AFC interpretability index")[0].rsplit("\n\n", 1)[1]
    lines = table.strip().splitlines()
    header = lines[0].split()
    assert header[:4] == ["layer", "similarity", "units", "mean_index"] and "rho_rs_iam" in header
    rows = {tuple(line.split()[:2]): line.split() for line in lines[1:]}
    for row in stats.to_pylist():
        line = rows[(row["layer"], row["similarity"])]
        assert line[3] == f"{row['mean_index']:.3f}"
        assert line[header.index(f"rho_{row['against']}")] == f"{row['spearman_rho']:.3f}"


def test_report_page_figures_and_exemplar_strips(run_dir, report):
    html_path, _, _ = report
    page = html_path.read_text(encoding="utf-8")
    assert 'id="interpretability-stats"' in page and page.count('data-similarity="labels"') == 2
    figures = sorted(p.name for p in (html_path.parent / "figures").glob("interpretability_*.png"))
    assert figures == ["interpretability_by_depth.png", "interpretability_vs_rs_am_rho_by_depth.png",
                       "interpretability_vs_rs_iam_rho_by_depth.png",
                       "interpretability_vs_selectivity_rho_by_depth.png"]  # fmt: skip
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', page, re.S).group(1))
    thumbs = json.loads(re.search(r'id="exemplar-thumbs">(.*?)</script>', page, re.S).group(1))
    units = data["units"]
    shown = set()
    exemplars = pq.read_table(next(run_dir.glob("exemplars/layer=conv/*.parquet"))).to_pylist()
    conv = data["layers"].index(next(layer for layer in data["layers"] if layer["name"] == "conv"))
    for entry, (layer, unit) in enumerate(zip(units["layer"], units["unit"], strict=True)):
        if layer != conv:
            assert units["ex_top"][entry] == [] and units["ex_bottom"][entry] == []
            continue
        for side in ("top", "bottom"):
            expected = [r["image_index"] for r in sorted(exemplars, key=lambda r: r["rank"])
                        if r["unit"] == unit and r["side"] == side][:STRIP]  # fmt: skip
            positions = units[f"ex_{side}"][entry]
            assert len(positions) == STRIP
            # an image without a thumbnail (50-59) is -1; the others point at one thumbnail per image
            assert [p == -1 for p in positions] == [i >= 50 for i in expected]
            shown.update(zip(positions, expected, strict=True))
        labels = index_of(run_dir, "conv", unit)
        assert units["interp"]["labels"][entry] == labels
    by_position = {}
    for position, image in shown:
        if position >= 0:
            assert by_position.setdefault(position, image) == image  # one image per position
    assert len(thumbs) == len(by_position)  # each distinct image once
    assert data["exemplars"]["side"] == exemplar_side(len(thumbs), 16) == 16


def index_of(run_dir, layer, unit):
    value = stored_index(run_dir)[(layer, "labels", unit)]
    return None if math.isnan(value) else float(f"{value:.4g}")
