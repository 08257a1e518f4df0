"""`repsub basis fit` / `repsub.fit_basis` end to end on the shallow CNN and tiny generated data: what is stored,
read back, listed, and refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

import repsub
from repsub.capture.positions import sample_vectors
from repsub.capture.reader import LayerCapture
from repsub.core.bases.metrics import fve
from repsub.data.sources import open_source
from repsub.errors import RunError, UsageError


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder_dir, shallow_random):
    out = tmp_path_factory.mktemp("bases") / "run"
    repsub.selectivity(model=shallow_random, data=image_folder_dir, out=out, layers=["conv2", "fc5"],
                       workers=0, progress=False, precision="fp32")  # fmt: skip
    return out


def test_pca_fit_is_stored_with_its_hash_and_reads_back(run, image_folder_dir, shallow_random):
    rows = repsub.fit_basis(run, kind="pca", size=8, positions=6, workers=0, seed=0)
    assert rows.column("layer").to_pylist() == ["conv2", "fc5"] and rows.column("size").to_pylist() == [8, 8]
    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["bases"]["conv2/pca"]
    assert entry["kind"] == "pca" and entry["hash"] == rows.column("hash")[0].as_py()
    assert (run / entry["file"]).is_file() and manifest["commands"]["basis/pca"]["invocations"]
    basis = repsub.load_basis(run, "conv2", "pca")
    assert basis.content_hash() == entry["hash"] and basis.size == 8 and basis.n_channels == 64
    # The stored basis is the fit on the sampled fit vectors: recompute it independently (numpy eigh).
    source = open_source(image_folder_dir, 32, shallow_random.mean, shallow_random.std)
    indices = list(range(len(source)))
    sample = sample_vectors(shallow_random, shallow_random.select(["conv2"]),
                            source.batches(8, indices=indices, workers=0), indices, 6, 0)["conv2"]  # fmt: skip
    x = sample.fit.double().numpy()
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    top = eigenvectors[:, ::-1][:, :8].T
    assert np.allclose(np.abs((basis.directions.double().numpy() * top).sum(axis=1)), 1.0, atol=1e-4)
    stored = rows.to_pylist()[0]
    # The test's own forward rounds the float32 activations differently on some CPUs (AMD EPYC: 2e-8 relative).
    assert stored["fve"] == pytest.approx(fve(basis, sample.held_out), rel=1e-6)
    assert stored["stability"] == pytest.approx(1.0) and stored["dead"] == 0 and stored["mean_l0"] == 8
    listed = repsub.list_bases(run)
    assert listed.num_rows == 2 and "state" not in listed.column_names
    table = repsub.open_run(run).bases.to_table(columns=["layer", "name", "kind", "hash"])
    assert sorted(table.column("layer").to_pylist()) == ["conv2", "fc5"]


def test_each_kind_fits_on_a_layer(run):
    sizes = {"random": 16, "ica": 4, "nmf": 6, "kmeans": 8, "sae": None}
    for kind, size in sizes.items():
        row = repsub.fit_basis(run, layers=["conv2"], kind=kind, size=size, positions=6, workers=0,
                               sae_epochs=2).to_pylist()[0]  # fmt: skip
        basis = repsub.load_basis(run, "conv2", kind)
        assert basis.kind == kind and row["hash"] == basis.content_hash()
        assert 0 <= row["stability"] <= 1 + 1e-9 and row["n_held_out"] > 0
    assert repsub.load_basis(run, "conv2", "sae").size == 4 * 64
    assert repsub.load_basis(run, "fc5", "unit").size == 128


def test_vectors_and_the_refusals(run, tmp_path):
    good = tmp_path / "dirs.npy"
    np.save(good, np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32))
    row = repsub.fit_basis(run, layers=["conv2"], kind="vectors", vectors=good, name="mine", workers=0)
    assert row.column("size").to_pylist() == [5] and np.isnan(row.column("stability")[0].as_py())
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.ones(5, 63), wrong)
    with pytest.raises(UsageError, match=r"wrong.pt: directions of 63 values; layer conv2 has C = 64"):
        repsub.fit_basis(run, layers=["conv2"], kind="vectors", vectors=wrong, name="bad", workers=0)
    with pytest.raises(UsageError, match=r"--size 65 is larger than pca allows on conv2: K <= C = 64"):
        repsub.fit_basis(run, layers=["conv2"], kind="pca", size=65, name="big", workers=0)
    with pytest.raises(UsageError, match=r"basis 'nope' of layer 'conv2' does not exist in .*conv2/mine"):
        repsub.load_basis(run, "conv2", "nope")
    with pytest.raises(RunError, match="this fit differs"):  # another fit under a name the run holds
        repsub.fit_basis(run, layers=["conv2"], kind="pca", size=4, name="mine", workers=0)
    with pytest.raises(UsageError, match="basis name '../x'"):
        repsub.fit_basis(run, kind="pca", name="../x")


def test_a_basis_of_another_model_is_refused(run, tmp_path):
    other = repsub.load_model("shallow_cnn", weights="random", seed=1, num_classes=3)
    with pytest.raises(RunError, match="fitted on another model"):
        repsub.load_basis(run, "conv2", "pca", model=other.identity())
    # a basis file copied into the run from another model's run: its row says which model made it
    path = run / "bases" / "layer=conv2" / "pca.parquet"
    table = pq.read_table(path)
    identity = json.loads(table.column("model")[0].as_py())
    copied = tmp_path / "copy.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("model"), "model",
                                    [[json.dumps({**identity, "weights_sha256": "0" * 64})]]), copied)  # fmt: skip
    original = path.read_bytes()
    try:
        path.write_bytes(copied.read_bytes())
        with pytest.raises(RunError, match="fitted on another model"):
            repsub.load_basis(run, "conv2", "pca")
    finally:
        path.write_bytes(original)


def test_the_command_line(run):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    fit = subprocess.run([sys.executable, "-m", "repsub.cli", "basis", "fit", str(run), "--layers", "fc5",
                          "--kind", "pca", "--size", "3", "--name", "cli", "--workers", "0", "--positions", "2"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "fc5/cli: pca K=3" in fit.stdout
    listed = subprocess.run([sys.executable, "-m", "repsub.cli", "basis", "list", str(run), "--json"],
                            capture_output=True, text=True, env=env)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert {"layer": "fc5", "name": "cli"}.items() <= next(
        r for r in json.loads(listed.stdout) if r["name"] == "cli"
    ).items()
    bad = subprocess.run([sys.executable, "-m", "repsub.cli", "basis", "fit", str(run), "--kind", "pca",
                          "--size", "999", "--workers", "0"], capture_output=True, text=True, env=env)  # fmt: skip
    assert bad.returncode == 2 and "--size 999 is larger than pca allows" in bad.stderr


def test_a_fitted_basis_is_measured_by_name(tmp_path, image_folder_dir, shallow_random):
    """`--basis NAME` finds the run's fitted basis: its directions' selectivity equals the class means of their
    responses computed by hand from the stored basis; a name fitted to several layers needs one of them."""
    out = tmp_path / "run"
    common = {"data": image_folder_dir, "out": out, "workers": 0, "progress": False, "precision": "fp32"}
    repsub.selectivity(model=shallow_random, layers=["conv2", "fc5"], **common)
    repsub.fit_basis(out, kind="pca", size=4, positions=6, workers=0, seed=0)
    with pytest.raises(UsageError, match="fitted to layers conv2, fc5: give one of them"):
        repsub.selectivity(basis="pca", **common)
    with pytest.raises(UsageError, match="no basis 'nmf' in .*; this run has: unit, pca"):
        repsub.selectivity(basis="nmf", layers=["fc5"], **common)
    table = repsub.selectivity(basis="pca", layers=["fc5"], **common)
    assert table.column("basis").to_pylist() == ["pca"] * 4 and table.column("unit").to_pylist() == [
        0,
        1,
        2,
        3,
    ]
    basis = repsub.load_basis(out, "fc5", "pca")
    source = open_source(image_folder_dir, 32, shallow_random.mean, shallow_random.std)
    responses, labels = [], []
    with torch.no_grad():
        for images, batch_labels in source.batches(8, workers=0):
            fc5 = LayerCapture(shallow_random.module, shallow_random.select(["fc5"]))(images).activations[
                "fc5"
            ]
            responses.append(basis.encode(fc5)[0].double())
            labels.append(batch_labels)
    responses, labels = torch.cat(responses), torch.cat(labels)
    expected = torch.stack([responses[labels == c].mean(0) for c in range(3)]).T  # [K, classes]
    got = torch.tensor(table.column("class_means").to_pylist(), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_one_basis_name_fitted_to_several_layers_is_measured_layer_by_layer(tmp_path, image_folder_dir,
                                                                             shallow_random):  # fmt: skip
    """Each layer's fit of a name is its own (another K, another hash): measuring conv2's after fc5's is no
    mixing, while a refit of fc5 still cannot sit beside fc5's old rows."""
    out = tmp_path / "run"
    common = {"data": image_folder_dir, "out": out, "workers": 0, "progress": False, "precision": "fp32"}
    repsub.selectivity(model=shallow_random, layers=["conv2", "fc5"], **common)
    repsub.fit_basis(out, kind="pca", size=4, positions=6, workers=0, seed=0)
    repsub.selectivity(basis="pca", layers=["fc5"], **common)
    repsub.selectivity(basis="pca", layers=["conv2"], **common)  # not refused: conv2's fit is conv2's
    rows = repsub.open_run(out).table("selectivity").filter(pc.equal(pc.field("basis"), "pca"))
    assert sorted(set(rows.column("layer").to_pylist())) == ["conv2", "fc5"]
    repsub.fit_basis(out, kind="random", size=4, name="rand", layers=["fc5"], positions=6, workers=0, seed=0)
    repsub.selectivity(basis="rand", layers=["fc5"], **common)
    run = repsub.open_run(out)
    assert run.table("selectivity").filter(pc.equal(pc.field("basis"), "rand")).num_rows == 4
