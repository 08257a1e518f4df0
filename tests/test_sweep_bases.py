"""Bases in sweeps (issue 18): fit shards before target shards, on a real local Ray; the fit is the command's
(`repsub basis fit`), sharded pca is the unsharded pca, and every basis's rows land exactly once."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.compute as pc
import pytest
import ray
import torch
import yaml

import repsub
from repsub.capture.positions import sample_vectors
from repsub.core.bases.basis import Basis
from repsub.core.bases.pca import PcaSums
from repsub.data.sources import open_source
from repsub.errors import RunError, UsageError
from repsub.runstore.bases import row_state
from repsub.runstore.writer import RunWriter
from repsub.sweep import parse_config, run_sweep
from repsub.sweep.commit import ShardLedger
from repsub.sweep.plan import plan_fit_shards
from repsub.sweep.work import ShardRunner
from tests.sweep_helpers import kill_a_driver_midway, small_sweep_config, start_local_ray

LAYERS = ["conv2", "fc5"]
PCA = {"name": "pca", "kind": "pca", "size": 4, "layers": LAYERS, "positions": 6}
SAE = {
    "name": "sae",
    "kind": "sae",
    "size": 16,
    "top_k": 4,
    "layers": LAYERS,
    "positions": 6,
    "sae_epochs": 3,
}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    start_local_ray(tmp_path_factory.mktemp("ray"))
    yield
    ray.shutdown()


def bases_config(out, data, images_per_shard=5, **overrides):
    return small_sweep_config(out, data, units="0-3", images_per_shard=images_per_shard, bases=[PCA, SAE],
                              **overrides)  # fmt: skip


def target_rows(uri, table: str) -> list[tuple]:
    """(method, layer, basis, unit) of every units row, or (layer, basis, unit) of every selectivity row, sorted:
    a duplicate would show twice."""
    columns = ["method", "layer", "basis", "unit"] if table == "units" else ["layer", "basis", "unit"]
    rows = getattr(repsub.open_run(uri), table).to_table(columns=columns)
    return sorted(zip(*(rows[c].to_pylist() for c in columns), strict=True))


def basis_rows(uri, name: str) -> dict[str, dict]:
    """The run's stored rows of basis `name`, by layer (without `command`: who wrote them)."""
    table = repsub.open_run(uri).bases.to_table()
    return {
        row["layer"]: {k: v for k, v in row.items() if k not in ("layer", "command")}
        for row in table.to_pylist()
        if row["name"] == name
    }


def test_a_pca_fit_over_shards_equals_the_unsharded_fit(tmp_path, image_folder_dir):
    """The fit shards (the actors' code, in process) over 5 data shards: pca's merged sums are the covariance of
    one pass's sample (1e-10 relative), its directions the unsharded eigenvectors up to sign, and the gathered
    sample is the one pass's (each image's own draw)."""
    config = bases_config(tmp_path / "sweep", image_folder_dir, methods=["am"])
    runner = ShardRunner(config)
    fit_data, fit_shards = plan_fit_shards(config, 21)
    assert len(fit_data) == 5 and [s.id for s in fit_shards] == ["fit-pca", "fit-sae"]
    for shard in reversed(fit_data):  # any order
        runner.run_fit_data_shard(shard)
    runner.run_fit_shard(fit_shards[0])
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    fitted = ledger.load_fitted("pca")

    model = runner.model
    source = open_source(image_folder_dir, 16, model.mean, model.std)
    indices = list(range(21))
    single = sample_vectors(model, model.select(LAYERS), source.batches(7, indices=indices, workers=0), indices, 6,
                            config.seed)  # fmt: skip
    parts = [ledger.load_fit_samples(shard.id) for shard in fit_data]
    for layer in LAYERS:
        gathered = torch.cat([part["samples"][f"{layer}@6"]["fit"] for part in parts])
        torch.testing.assert_close(gathered, single[layer].fit, rtol=1e-5, atol=1e-6)
        merged = PcaSums.from_state_dict(parts[0]["pca"][f"{layer}@6"])
        for part in parts[1:]:
            merged.merge(PcaSums.from_state_dict(part["pca"][f"{layer}@6"]))
        unsharded = PcaSums(gathered.shape[1]).add(gathered)
        assert merged.n == unsharded.n == len(single[layer].fit)
        difference = (merged.covariance() - unsharded.covariance()).norm() / unsharded.covariance().norm()
        assert difference < 1e-10
        # The stored basis against numpy's eigenvectors of the unsharded sample's covariance.
        eigenvalues, eigenvectors = np.linalg.eigh(np.cov(gathered.double().numpy(), rowvar=False, bias=True))
        top = eigenvectors[:, ::-1][:, :4].T
        stored = Basis.from_state(row_state(fitted[layer].to_pylist()[0])).directions.double()
        cosines = np.abs((stored.numpy() * top).sum(axis=1))
        assert np.allclose(cosines, 1.0, atol=1e-5), cosines


def test_one_fit_shard_is_repsub_basis_fit_bit_for_bit(tmp_path, image_folder_dir):
    """In one process, with the data in one shard read in the command's batches, the sweep's fit shard and
    `repsub basis fit` store the same row: same content hash, same metrics, same record of the fit."""
    config = bases_config(tmp_path / "sweep", image_folder_dir, images_per_shard=21, methods=["am"])
    runner = ShardRunner(config)
    fit_data, fit_shards = plan_fit_shards(config, 21)
    runner.run_fit_data_shard(fit_data[0])
    runner.run_fit_shard(fit_shards[0])
    swept = ShardLedger(RunWriter(config.out), config.fingerprint()).load_fitted("pca")

    out = tmp_path / "command"
    repsub.selectivity(model=runner.model, data=image_folder_dir, out=out, image_size=16, layers=LAYERS,
                       batch_size=4, workers=0, progress=False, seed=config.seed)  # fmt: skip
    repsub.fit_basis(out, kind="pca", size=4, positions=6, batch_size=4, workers=0, seed=config.seed)
    stored = basis_rows(out, "pca")
    for layer in LAYERS:
        row = swept[layer].to_pylist()[0]
        assert row == stored[layer], layer


def test_sweep_with_bases_equals_the_command_path(local_ray, tmp_path, image_folder_dir):
    """A sweep with bases [pca, sae] on a real local Ray: the rows of every basis exactly once; pca's fit, its
    directions' selectivity and AM/IAM rows equal `repsub basis fit` + `repsub selectivity --basis` +
    `repsub visualize --basis` bit for bit (the actors' forwards are single-threaded: the command's are too here;
    the data pass reads pca and sae stacked, each reduced alone)."""
    # One data shard and one block of directions a layer: the command's batches, so its very floats.
    config = bases_config(
        tmp_path / "sweep", image_folder_dir, images_per_shard=21, sharding={"units_per_shard": 4}
    )
    run_sweep(config, progress=False)
    expected_units = sorted(
        [(m, layer, "unit", u) for m in ("am", "iam") for layer in LAYERS for u in range(4)]
        + [(m, layer, "pca", u) for m in ("am", "iam") for layer in LAYERS for u in range(4)]
        + [(m, layer, "sae", u) for m in ("am", "iam") for layer in LAYERS for u in range(4)]
    )
    assert target_rows(config.out, "units") == expected_units
    expected_selectivity = sorted(
        [("conv2", "unit", u) for u in range(64)] + [("fc5", "unit", u) for u in range(128)]
        + [(layer, basis, u) for layer in LAYERS for basis, k in (("pca", 4), ("sae", 16)) for u in range(k)]
    )  # fmt: skip
    assert target_rows(config.out, "selectivity") == expected_selectivity
    manifest = repsub.open_run(config.out).manifest
    swept_pca = basis_rows(config.out, "pca")
    swept_sae = basis_rows(config.out, "sae")
    assert {key: entry["hash"] for key, entry in manifest["bases"].items()} == {
        f"{layer}/{name}": rows[layer]["hash"]
        for layer in LAYERS
        for name, rows in (("pca", swept_pca), ("sae", swept_sae))
    }
    writes = manifest["commands"]["sweep"]["invocations"][-1]["writes"]
    assert (
        writes["selectivity@pca"]["layer_meanings"]["fc5"]["basis"]["content_hash"]
        == swept_pca["fc5"]["hash"]
    )

    out = tmp_path / "command"
    model = ShardRunner(config).model
    common = {"model": model, "out": out, "seed": config.seed, "progress": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's actors (one CPU each) run
    try:
        repsub.selectivity(
            data=image_folder_dir, image_size=16, layers=LAYERS, batch_size=4, workers=0, **common
        )
        repsub.fit_basis(out, kind="pca", size=4, positions=6, batch_size=4, workers=0, seed=config.seed)
        command_pca = basis_rows(out, "pca")
        for layer in LAYERS:
            assert command_pca[layer] == swept_pca[layer], layer  # the same fit, bit for bit
            repsub.selectivity(data=image_folder_dir, image_size=16, layers=[layer], batch_size=4, workers=0,
                               basis="pca", **common)  # fmt: skip
            for method in ("am", "iam"):
                repsub.visualize(method=method, layers=[layer], units="0-3", basis="pca", steps=4, image_size=16,
                                 batch_size=8, **common)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    compare = ["layer", "unit", "basis", "class_means", "n_images"]
    for table, columns in (("selectivity", compare), ("units", ["method", "layer", "unit", "basis", "seed",
                                                                "layer_activations", "status"])):  # fmt: skip
        a = getattr(repsub.open_run(out), table).to_table(columns=columns)
        b = getattr(repsub.open_run(config.out), table).to_table(columns=columns)
        order = [(c, "ascending") for c in columns[: columns.index("unit") + 2]]
        a = a.filter(pc.field("basis") == "pca").sort_by(order)
        b = b.filter(pc.field("basis") == "pca").sort_by(order)
        assert a.num_rows == b.num_rows > 0
        for column in columns:
            assert b[column].to_pylist() == a[column].to_pylist(), (table, column)


def test_a_resumed_sweep_stores_the_same_fit(local_ray, tmp_path, image_folder_dir):
    """A driver killed during the fit phase, rerun: the fit shards done are kept, the rest computed, and the stored
    bases are those of an uninterrupted sweep (pca bit for bit; the sae too: the same sample, seed and device)."""
    whole = bases_config(tmp_path / "whole", image_folder_dir, methods=["am"])
    run_sweep(whole, progress=False)
    path = tmp_path / "killed.yaml"
    raw = {**whole.to_dict(), "out": str(tmp_path / "killed")}
    raw["layers"] = list(raw["layers"])
    for key in ("optimization", "importance", "storage"):
        raw.pop(key)
    raw["optimization"] = {"steps": 4, "image_size": 16, "batch_size": 8}
    path.write_text(yaml.safe_dump(raw))
    config, done = kill_a_driver_midway(path, shards_first=2)
    assert 2 <= done < 7, done  # killed within the fit phase (5 fit data shards, 2 fit shards)
    run_sweep(config, progress=False)
    for name in ("pca", "sae"):
        assert basis_rows(config.out, name) == basis_rows(whole.out, name), name
    assert target_rows(config.out, "units") == target_rows(whole.out, "units")


def test_another_fit_of_a_basis_name_is_refused_before_any_write(local_ray, tmp_path, image_folder_dir):
    config = bases_config(tmp_path / "sweep", image_folder_dir, methods=["am"])
    repsub.selectivity(model=ShardRunner(config).model, data=image_folder_dir, out=config.out, image_size=16,
                       layers=LAYERS, batch_size=4, workers=0, progress=False, seed=config.seed)  # fmt: skip
    repsub.fit_basis(config.out, kind="pca", size=2, positions=6, workers=0, seed=config.seed)  # another K
    before = json.loads((tmp_path / "sweep" / "manifest.json").read_text())["bases"]
    with pytest.raises(
        RunError, match="basis 'pca' of conv2 exists in this run .*rename the basis in the config"
    ):
        run_sweep(config, progress=False)
    after = repsub.open_run(config.out)
    assert after.manifest["bases"] == before
    assert set(after.selectivity.to_table(columns=["basis"]).column("basis").to_pylist()) == {"unit"}


@pytest.mark.parametrize(
    ("basis", "message"),
    [
        (
            {"name": "p", "kind": "pcaa", "layers": ["conv2"]},
            "kind 'pcaa'; valid kinds in a sweep: random, pca",
        ),
        ({"name": "p", "kind": "pca", "size": 65, "layers": ["conv2"]}, "K <= C = 64"),
        (
            {"name": "p", "kind": "pca", "layers": ["conv1"]},
            "layer(s) conv1 not among the sweep's layers: conv2",
        ),
        (
            {"name": "p", "kind": "sae", "size": 8, "top_k": 9, "layers": ["fc5"]},
            "top_k 9: the sae keeps 1 to K = 8",
        ),
        ({"name": "p", "kind": "vectors", "layers": ["fc5"]}, "kind 'vectors'; valid kinds in a sweep"),
        ({"kind": "pca", "layers": ["fc5"]}, "'name' is required"),
        ({"name": "a b", "kind": "pca", "layers": ["fc5"]}, "basis name 'a b'"),
        ({"name": "p", "kind": "pca", "layers": ["fc5"], "k": 3}, "unknown key(s) bases[0].k"),
    ],
)
def test_bad_bases_are_refused_with_the_key_named(tmp_path, basis, message):
    raw = {"model": "shallow_cnn", "out": str(tmp_path), "layers": LAYERS, "selectivity": {"data": "demo"},
           "bases": [basis]}  # fmt: skip
    with pytest.raises(UsageError) as err:
        parse_config(raw)
    assert message in str(err.value)
    with pytest.raises(UsageError, match="bases are fitted on selectivity.data"):
        parse_config({**raw, "selectivity": {}, "bases": [PCA]})
    with pytest.raises(UsageError, match="a second basis named 'pca'"):
        parse_config({**raw, "bases": [PCA, PCA]})


def test_bases_change_the_fingerprint_and_none_keeps_the_old_one(tmp_path):
    raw = {"model": "shallow_cnn", "out": str(tmp_path), "layers": LAYERS, "selectivity": {"data": "demo"}}
    plain = parse_config(raw)
    assert plain.fingerprint() == parse_config({**raw, "bases": []}).fingerprint()
    with_pca = parse_config({**raw, "bases": [PCA]})
    assert with_pca.fingerprint() != plain.fingerprint()
    assert with_pca.fingerprint() != parse_config({**raw, "bases": [{**PCA, "size": 3}]}).fingerprint()


VGG_LAYERS = ["conv3_3", "conv4_3", "conv5_3", "fc7"]


def test_a_vgg16_shaped_sweep_with_pca_and_sae_runs_end_to_end(local_ray, tmp_path, image_folder_dir):
    """The full VGG16 (seeded random weights) at 32 px, a pca and an sae basis on conv3_3, conv4_3, conv5_3 and
    fc7, two units or directions a layer, two steps: every row exactly once."""
    raw = {
        "model": "vgg16", "weights": "random", "seed": 1, "out": str(tmp_path / "vgg"), "layers": VGG_LAYERS,
        "units": "0-1", "optimization": {"steps": 2, "image_size": 32, "batch_size": 2},
        "selectivity": {"data": str(image_folder_dir), "image_size": 32, "batch_size": 8, "workers": 0,
                        "images_per_shard": 11, "exemplars": 0},
        "sharding": {"units_per_shard": 2}, "workers": {"count": 2, "cpus": 1},
        "bases": [{"name": "pca", "kind": "pca", "size": 4, "layers": VGG_LAYERS, "positions": 2, "stability": False},
                  {"name": "sae", "kind": "sae", "size": 8, "top_k": 2, "layers": VGG_LAYERS, "positions": 2,
                   "sae_epochs": 1, "stability": False}],
    }  # fmt: skip
    config = parse_config(raw)
    started = time.monotonic()
    run_sweep(config, progress=False)
    print(f"vgg16-shaped sweep with bases: {time.monotonic() - started:.1f} s")
    expected = sorted(
        (method, layer, basis, u)
        for method in ("am", "iam") for layer in VGG_LAYERS for basis in ("unit", "pca", "sae") for u in (0, 1)
    )  # fmt: skip
    assert target_rows(config.out, "units") == expected
    widths = {"conv3_3": 256, "conv4_3": 512, "conv5_3": 512, "fc7": 4096}
    expected = sorted(
        [(layer, "unit", u) for layer in VGG_LAYERS for u in range(widths[layer])]
        + [(layer, "pca", u) for layer in VGG_LAYERS for u in range(4)]
        + [(layer, "sae", u) for layer in VGG_LAYERS for u in range(8)]
    )
    assert target_rows(config.out, "selectivity") == expected
    listed = repsub.list_bases(config.out)
    assert sorted(zip(listed["layer"].to_pylist(), listed["name"].to_pylist(), strict=True)) == sorted(
        (layer, name) for layer in VGG_LAYERS for name in ("pca", "sae")
    )
    assert all(n > 0 for n in listed["n_fit"].to_pylist())
