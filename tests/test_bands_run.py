"""The band pass (issue 19) of `repsub selectivity` and of a sweep: per-band class counts and samples checked
against a brute force from the pass's saved activations and the stored edges, data shards (in process and on
a real local Ray) equal to one unsharded pass exactly, Run.bands' composition, and bad inputs refused."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pyarrow.compute as pc
import pytest
import ray
import torch

import repsub
from repsub.analysis.bands import BAND_STRIP
from repsub.cli import main
from repsub.core.bands import BAND_NAMES, EDGE_RANKS, image_keys
from repsub.errors import RunError, UsageError
from repsub.runstore.tables import STORED_RANKS
from repsub.runstore.writer import RunWriter
from repsub.sweep import run_sweep
from repsub.sweep.commit import ShardLedger
from repsub.sweep.driver import _merged_quantiles, merge_partial_bands
from repsub.sweep.plan import plan_band_shards, plan_data_shards
from repsub.sweep.work import ShardRunner
from tests.chromium import Chromium
from tests.sweep_helpers import small_sweep_config, start_local_ray

LAYERS = ["conv2", "fc5"]
SAMPLE = 5


def columns(run, table: str, layer: str, keys: list[str]) -> dict:
    rows = run.table(table, filter=pc.field("layer") == layer).sort_by([(k, "ascending") for k in keys])
    return {name: rows.column(name).to_pylist() for name in rows.column_names}


def brute_force_bands(values: np.ndarray, labels: np.ndarray, edges: np.ndarray, classes: int, seed: int):
    """Per unit and band (unit-major, as the table): class counts and the SAMPLE images of smallest key, by
    plain loops over the images."""
    keys = image_keys(seed, np.arange(len(values)))
    counts, samples = [], []
    for unit in range(values.shape[1]):
        members = [[] for _ in BAND_NAMES]
        for image, value in enumerate(values[:, unit]):
            members[int(sum(value >= edge for edge in edges[:, unit]))].append(image)
        for images in members:
            counts.append(np.bincount(labels[images], minlength=classes).tolist())
            samples.append(sorted(images, key=lambda i: keys[i])[:SAMPLE])
    return counts, samples


def test_band_pass_equals_a_brute_force_from_the_saved_activations_and_stored_edges(
    tmp_path, image_folder_dir
):
    out = tmp_path / "run"
    repsub.selectivity(model="shallow_cnn", weights="random", seed=2, data=image_folder_dir, out=out, image_size=16,
                       layers=LAYERS, batch_size=4, workers=0, progress=False, exemplars=2, quantile_k=50,
                       band_sample=SAMPLE, save_activations=LAYERS, precision="fp32")  # fmt: skip
    run = repsub.open_run(out)
    config = run.manifest["commands"]["selectivity"]["config"]
    assert config["bands"] == {"edge_ranks": list(EDGE_RANKS), "names": list(BAND_NAMES), "sample": SAMPLE,
                               "seed": 2}  # fmt: skip
    assert 0.75 in STORED_RANKS
    activations = run.activations.to_table()
    sampled = set()
    for layer in LAYERS:
        per_image = activations.filter(pc.field("layer") == layer).sort_by("image_index")
        values = np.array(per_image.column("activations").to_pylist(), dtype=np.float32)
        labels = per_image.column("label").to_numpy()
        quantiles = columns(run, "quantiles", layer, ["unit"])
        stored = np.array(quantiles["values"], dtype=np.float32).T  # [ranks, units]
        edges = stored[[list(STORED_RANKS).index(r) for r in EDGE_RANKS]]
        got = columns(run, "bands", layer, ["unit", "band"])
        counts, samples = brute_force_bands(values, labels, edges, 3, seed=2)
        assert got["class_counts"] == counts, layer
        assert got["sample"] == samples, layer
        assert got["images"] == [sum(c) for c in counts]
        assert got["name"] == list(BAND_NAMES) * values.shape[1] and set(got["basis"]) == {"unit"}
        bounds = np.concatenate(
            [[np.full(values.shape[1], -np.inf)], edges, [np.full(values.shape[1], np.inf)]]
        )
        np.testing.assert_array_equal(np.array(got["lower"], np.float32), bounds[:-1].T.reshape(-1))
        np.testing.assert_array_equal(np.array(got["upper"], np.float32), bounds[1:].T.reshape(-1))
        sampled |= {i for sample in samples for i in sample}
    exemplar_images = set(run.exemplar_rows.to_table().column("image_index").to_pylist())
    stored_images = run.images.to_table().column("image_index").to_pylist()
    assert sorted(stored_images) == sorted(sampled | exemplar_images)  # each image once

    # Run.bands: the composition against a hand computation from the class counts
    frame = run.bands("fc5", 4)
    counts = np.array(columns(run, "bands", "fc5", ["unit", "band"])["class_counts"][4 * 7 : 5 * 7])  # unit 4
    prior = counts.sum(0) / counts.sum()
    assert prior.sum() == pytest.approx(1) and counts.sum() == 21
    for band, row in frame.iterrows():
        share = counts[band] / max(counts[band].sum(), 1)
        order = [c for c in np.argsort(-counts[band], kind="stable")[:3] if counts[band][c] > 0]
        assert row["top_classes"] == order and row["images"] == counts[band].sum()
        assert row["top_lift"] == pytest.approx([share[c] / prior[c] for c in order])
        assert row["top_names"] == [f"class_{c:02d}" for c in order]
        top_of_top = frame["top_classes"].iloc[-1][:1]
        expected_mid = 0 < band < 6 and bool(order) and bool(top_of_top) and order[:1] != top_of_top
        assert row["mid_range"] == expected_mid
    with pytest.raises(RunError, match="no bands of fc5 unit 999"):
        run.bands("fc5", 999)


def test_bad_band_options_are_refused(tmp_path, image_folder_dir, capsys):
    common = ["selectivity", "--model", "shallow_cnn", "--weights", "random", "--data", str(image_folder_dir),
              "--image-size", "16", "--layers", "fc5", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a"), "--band-sample", "-1"]) == 2
    assert "--band-sample must be at least 0, got -1" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "b"), "--bands", "--quantile-k", "0"]) == 2
    assert (
        "--bands draws each unit's band edges from its quantiles: not with --quantile-k 0"
        in capsys.readouterr().err
    )
    with pytest.raises(UsageError, match="--bands writes into a run: give --out"):
        repsub.selectivity(model="shallow_cnn", data=image_folder_dir, bands=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # --no-bands: the quantiles without the second pass
    assert main([*common, "--out", str(tmp_path / "c"), "--no-bands", "--exemplars", "0"]) == 0
    run = repsub.open_run(tmp_path / "c")
    assert run.quantiles is not None and run.band_rows is None and run.images is None
    assert "bands" not in run.manifest["commands"]["selectivity"]["config"]
    with pytest.raises(UsageError, match="--band-sample must be an integer"):
        repsub.selectivity(model="shallow_cnn", data=image_folder_dir, out=tmp_path / "d", band_sample=1.5)


def test_data_shards_band_pass_equals_the_unsharded_pass_exactly(tmp_path, image_folder_dir):
    # The Ray actors' code in this process, shards of 8 images in batches of 4: the same batches as the single
    # pass, so the activations are bit-equal; below k every value is in the sketch, so the merged quantiles
    # equal the single pass's and so do the edges: then the bands must be equal exactly.
    config = small_sweep_config(tmp_path / "sweep", image_folder_dir, selectivity_batch=4, images_per_shard=8,
                                methods=["am"])  # fmt: skip
    config = replace(config, selectivity=replace(config.selectivity, quantile_k=50, band_sample=SAMPLE,
                                                  precision="fp32"))  # fmt: skip
    runner = ShardRunner(config)
    shards = plan_data_shards(21, 8)
    for shard in random.Random(0).sample(shards, len(shards)):
        runner.run_data_shard(shard)
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    quantiles, digest = ledger.fix_quantiles(lambda: _merged_quantiles(ledger, shards, LAYERS))
    again, same = ledger.fix_quantiles(lambda: pytest.fail("the merged quantiles are fixed once"))
    assert same == digest
    band_shards = plan_band_shards(shards, digest)
    for shard in random.Random(1).sample(band_shards, len(band_shards)):
        runner.run_band_shard(shard)
    merged = merge_partial_bands(ledger, band_shards)
    single = tmp_path / "single"
    repsub.selectivity(model=runner.model, data=image_folder_dir, out=single, image_size=16, layers=LAYERS,
                       batch_size=4, workers=0, progress=False, exemplars=0, quantile_k=50, band_sample=SAMPLE,
                       seed=3, precision="fp32")  # fmt: skip
    run = repsub.open_run(single)
    for layer in LAYERS:
        stored = np.array(columns(run, "quantiles", layer, ["unit"])["values"], np.float32).T
        np.testing.assert_array_equal(quantiles["values"][layer].numpy(), stored)  # the same edges
        got = columns(run, "bands", layer, ["unit", "band"])
        counts = merged.counts[layer].numpy().transpose(1, 0, 2).reshape(-1, 3)
        assert got["class_counts"] == counts.tolist()
        samples = merged.samples[layer]["index"].numpy().transpose(2, 0, 1).reshape(len(counts), -1)
        assert got["sample"] == [[i for i in row if i >= 0] for row in samples.tolist()]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    start_local_ray(tmp_path_factory.mktemp("ray"))
    yield
    ray.shutdown()


def test_sweep_band_phase_on_ray_equals_one_data_shard_and_shows_in_the_report(
    local_ray, tmp_path, image_folder_dir, capsys
):
    # Three data shards of 8 images against one of all 21, both on the Ray actors (batches of 4 in both:
    # bit-equal activations; below k, equal quantiles): the bands merged over shards equal one pass exactly.
    sharded = small_sweep_config(tmp_path / "sharded", image_folder_dir, units="0-2", methods=["am"],
                                 images_per_shard=8, selectivity={"data": str(image_folder_dir), "image_size": 16,
                                 "batch_size": 4, "workers": 0, "images_per_shard": 8, "band_sample": SAMPLE})  # fmt: skip
    whole = replace(sharded, out=str(tmp_path / "whole"),
                    selectivity=replace(sharded.selectivity, images_per_shard=21))  # fmt: skip
    run_sweep(sharded, progress=False)
    assert "band phase: 3 shards; 0 already done" in capsys.readouterr().out
    run_sweep(whole, progress=False)
    a, b = repsub.open_run(sharded.out), repsub.open_run(whole.out)
    for layer in LAYERS:
        assert (
            columns(a, "quantiles", layer, ["unit"])["values"]
            == columns(b, "quantiles", layer, ["unit"])["values"]
        )
        got, expected = (
            columns(a, "bands", layer, ["unit", "band"]),
            columns(b, "bands", layer, ["unit", "band"]),
        )
        for name in ("lower", "upper", "images", "class_counts", "sample"):
            assert got[name] == expected[name], (layer, name)
        assert all(sum(row) == 21 for row in np.array(got["class_counts"]).reshape(-1, 7, 3).sum(1).tolist())
    sampled = {i for sample in a.band_rows.to_table().column("sample").to_pylist() for i in sample}
    assert sampled <= set(a.images.to_table().column("image_index").to_pylist())
    # A rerun finds the band shards done and writes the same tables.
    run_sweep(sharded, progress=False)
    assert "band phase: 3 shards; 3 already done" in capsys.readouterr().out

    # The report: the per-layer count of units with a mid-range association, and a unit's bands in its detail
    report = tmp_path / "report"
    assert main(["report", sharded.out, "--out", str(report)]) == 0
    page = report / "report.html"
    with_mid = {layer: 0 for layer in LAYERS}
    for layer in LAYERS:
        units = {u for u in columns(a, "bands", layer, ["unit"])["unit"]}
        with_mid[layer] = sum(bool(a.bands(layer, u)["mid_range"].any()) for u in units)
    text = page.read_text()
    for layer in LAYERS:
        assert f'<tr data-layer="{layer}"><th scope="row">{layer}</th><td>' in text
        cells = text.split(f'<tr data-layer="{layer}"><th scope="row">{layer}</th>', 1)[1].split("</tr>", 1)[
            0
        ]
        units = len(set(columns(a, "bands", layer, ["unit"])["unit"]))
        assert cells.startswith(f"<td>{units}</td><td>{with_mid[layer]}</td>")
    expected = a.bands("fc5", 1)
    with Chromium(width=1280, height=1000) as browser:
        browser.open(page.as_uri() + "#unit=fc5/1/am")
        assert browser.evaluate("window.repsubExplorer.ready") is True
        rows = browser.evaluate("""Array.from(document.querySelectorAll("#detail-bands tr")).map((tr) => ({
            band: Number(tr.dataset.band), mid: tr.classList.contains("mid-range"),
            images: tr.querySelectorAll("td")[0].textContent,
            shown: Array.from(tr.querySelectorAll(".strip img")).filter((i) => i.src.startsWith("data:")).length}))""")
    assert [r["band"] for r in rows] == list(range(6, -1, -1))  # the top band first
    for r in rows:
        band = expected.iloc[r["band"]]
        assert r["images"] == f"{band['images']} images" and r["mid"] == bool(band["mid_range"])
        assert r["shown"] == min(len(band["sample"]), BAND_STRIP)  # every shown image has its thumbnail


def test_a_sweep_killed_in_its_band_phase_resumes_with_the_same_edges(
    local_ray, tmp_path, image_folder_dir, capsys
):
    # What a driver killed in the band phase leaves: every data shard, the merged quantiles fixed, one band shard
    # done (the actors' code, run here). The rerun runs only the other band shards, with the fixed edges.
    config = small_sweep_config(tmp_path / "sweep", image_folder_dir, units="0-2", methods=["am"],
                                selectivity={"data": str(image_folder_dir), "image_size": 16, "batch_size": 4,
                                             "workers": 0, "images_per_shard": 8, "band_sample": SAMPLE})  # fmt: skip
    runner = ShardRunner(config)
    data_shards = plan_data_shards(21, 8)
    for shard in data_shards:
        runner.run_data_shard(shard)
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    quantiles, digest = ledger.fix_quantiles(lambda: _merged_quantiles(ledger, data_shards, LAYERS))
    first = plan_band_shards(data_shards, digest)[0]
    runner.run_band_shard(first)
    before = ledger.load_partial_bands(first.id).counts
    run_sweep(config, progress=False)
    out = capsys.readouterr().out
    assert "3 already done" in out and "band phase: 3 shards; 1 already done" in out
    assert all(torch.equal(ledger.load_partial_bands(first.id).counts[n], c) for n, c in before.items())
    run = repsub.open_run(config.out)
    for layer in LAYERS:
        stored = np.array(columns(run, "quantiles", layer, ["unit"])["values"], np.float32).T
        np.testing.assert_array_equal(
            stored, quantiles["values"][layer].numpy()
        )  # the fixed merge, not a new one
        got = columns(run, "bands", layer, ["unit", "band"])
        edges = stored[[list(STORED_RANKS).index(r) for r in EDGE_RANKS]]
        np.testing.assert_array_equal(np.array(got["upper"], np.float32).reshape(-1, 7)[:, :-1], edges.T)
        assert set(np.array(got["images"]).reshape(-1, 7).sum(1).tolist()) == {21}
