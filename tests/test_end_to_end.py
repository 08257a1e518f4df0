"""visualize and selectivity on VGG16 with random weights at a small image size, read back with real clients."""

import json
import subprocess
import sys

import duckdb
import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pytest
import torch
from PIL import Image

import repsub
from repsub.cli import main
from repsub.core.selectivity import selectivity_index
from repsub.data.imagefolder import eval_transform
from repsub.runstore.tables import decode_png

SIZE = 32


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory, image_folder_dir):
    run = tmp_path_factory.mktemp("runs") / "vgg"
    common = ["--model", "vgg16", "--weights", "random", "--seed", "0", "--out", str(run), "--no-progress"]
    assert (
        main(
            [
                "selectivity",
                *common,
                "--data",
                str(image_folder_dir),
                "--image-size",
                str(SIZE),
                "--layers",
                "conv1_2,conv3_1,fc7",
                "--batch-size",
                "8",
                "--workers",
                "0",
                "--precision",
                "fp32",  # compared below with a direct fp32 computation
            ]
        )
        == 0
    )
    for method in ("am", "iam"):
        assert (
            main(
                [
                    "visualize",
                    *common,
                    "--method",
                    method,
                    "--layers",
                    "conv2_1,fc6",
                    "--units",
                    "0-5",
                    "--steps",
                    "3",
                    "--image-size",
                    str(SIZE),
                ]
            )
            == 0
        )
    return run


def test_selectivity_table_equals_a_direct_computation(vgg_run, image_folder_dir, vgg16_random):
    table = ds.dataset(vgg_run / "selectivity", format="parquet", partitioning="hive").to_table()
    assert sorted(set(table.column("layer").to_pylist())) == ["conv1_2", "conv3_1", "fc7"]
    transform = eval_transform(SIZE, vgg16_random.mean, vgg16_random.std)
    sums, counts = np.zeros((3, 256)), np.zeros(3)
    for label, folder in enumerate(sorted(image_folder_dir.iterdir())):
        for path in sorted(folder.iterdir()):
            x = transform(Image.open(path).convert("RGB"))[None]
            with torch.no_grad():
                fmap = torch.relu(
                    vgg16_random.module.features[:11](x)
                )  # conv3_1 before its ReLU, ReLU by hand
            sums[label] += fmap.mean(dim=(2, 3))[0].double().numpy()
            counts[label] += 1
    means = sums / counts[:, None]
    rows = table.filter(ds.field("layer") == "conv3_1").sort_by("unit").to_pydict()
    np.testing.assert_allclose(np.array(rows["class_means"]).T, means, rtol=1e-5, atol=1e-7)
    expected = selectivity_index(means)
    np.testing.assert_allclose(rows["selectivity"], expected.selectivity, rtol=1e-4, equal_nan=True)
    assert rows["dead"] == expected.dead.tolist()
    assert set(rows["n_images"]) == {21}
    finite = [s for s in rows["selectivity"] if s == s]
    assert finite and all(0 <= s <= 1 for s in finite)


def test_units_table_read_back_with_pyarrow(vgg_run):
    run = repsub.open_run(vgg_run)
    units = run.units.to_table()
    assert units.num_rows == 2 * 2 * 6
    for row in units.to_pylist():
        assert len(row["layer_activations"]) == {"conv2_1": 128, "fc6": 4096}[row["layer"]]
        acts = np.asarray(row["layer_activations"])
        assert row["activation"] == pytest.approx(acts[row["unit"]])
        assert row["rs"] == (acts > acts[row["unit"]]).sum() / len(acts)
        assert row["rs_ties"] == ((acts == acts[row["unit"]]).sum() - 1) / (len(acts) - 1)
        assert row["status"] == ("ok" if row["activation"] > 0 else "no_response")
        assert decode_png(row["image"]).shape == (SIZE, SIZE, 3)
        # 3 steps, and a target still silent after them up to 3 rescue rounds of 3 more: all 4 when it stays so
        assert row["steps"] in (3, 6, 9, 12) and (row["status"] == "ok" or row["steps"] == 12)
    manifest = run.manifest
    assert manifest["schema_version"] == 3 and manifest["model"]["model"] == "vgg16"
    assert manifest["invariants"] == {"reduce": "mean"}
    assert [layer["name"] for layer in manifest["catalog"]][:2] == ["conv1_1", "conv1_2"]
    assert manifest["catalog"][-1] == {
        "name": "fc8",
        "units": 1000,
        "module": "classifier.6",
        "kind": "linear",
        "read": "logits",
        "depth": 15,
    }
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert set(manifest["commands"]) == {"selectivity", "visualize/am", "visualize/iam"}
    assert manifest["libraries"]["torch"].startswith("2.14.1")
    assert manifest["commands"]["visualize/iam"]["config"]["settings"]["steps"] == 3


def test_tables_read_with_duckdb_and_polars(vgg_run):
    pattern = str(vgg_run / "units" / "*" / "*.parquet")
    by_duckdb = duckdb.sql(
        f"SELECT layer, method, count(*) AS n, avg(rs) AS rs FROM read_parquet('{pattern}', "
        "hive_partitioning=true) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert [(layer, method, n) for layer, method, n, _ in by_duckdb] == [
        ("conv2_1", "am", 6),
        ("conv2_1", "iam", 6),
        ("fc6", "am", 6),
        ("fc6", "iam", 6),
    ]
    by_polars = (
        pl.scan_parquet(str(vgg_run / "selectivity" / "**" / "*.parquet"), hive_partitioning=True)
        .group_by("layer")
        .agg(pl.len())
        .sort("layer")
        .collect()
    )
    assert by_polars.rows() == [("conv1_2", 64), ("conv3_1", 256), ("fc7", 4096)]


def test_rerun_replaces_rows_instead_of_duplicating(vgg_run):
    common = [
        "visualize",
        "--model",
        "vgg16",
        "--out",
        str(vgg_run),
        "--no-progress",
        "--method",
        "am",
        "--layers",
        "conv2_1",
        "--steps",
        "2",
        "--image-size",
        str(SIZE),
    ]
    before = repsub.open_run(vgg_run).units.to_table()
    assert main([*common, "--units", "4-8"]) == 0  # overlaps the stored 0-5
    after = repsub.open_run(vgg_run).units.to_table().to_pylist()
    am = sorted((r["unit"], r["steps"]) for r in after if r["layer"] == "conv2_1" and r["method"] == "am")
    assert am == [(0, 3), (1, 3), (2, 3), (3, 3), (4, 2), (5, 2), (6, 2), (7, 2), (8, 2)]
    untouched = [r for r in after if not (r["layer"] == "conv2_1" and r["method"] == "am")]
    assert len(untouched) == before.num_rows - 6
    assert not list(vgg_run.rglob(".tmp-*"))  # no staging file left behind


def test_another_model_is_not_mixed_into_a_run(vgg_run, capsys):
    code = main(
        [
            "visualize",
            "--model",
            "shallow_cnn",
            "--method",
            "am",
            "--out",
            str(vgg_run),
            "--steps",
            "1",
            "--no-progress",
        ]
    )
    assert code == 2 and "another model or weights" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "repsub.cli", "layers", "--model", "shallow_cnn", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    last = json.loads(out)[-1]
    assert (last["name"], last["units"], last["read"]) == ("fc6", 10, "logits")
