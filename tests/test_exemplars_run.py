"""Exemplars written by `repsub selectivity` and by a sweep's data shards, read back with Run.exemplars."""

import random

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

import repsub
from repsub.cli import main
from repsub.data.imagefolder import image_folder
from repsub.errors import RunError, UsageError
from repsub.models import load_model
from repsub.runstore.writer import RunWriter
from repsub.sweep.commit import ShardLedger
from repsub.sweep.driver import merge_partial_exemplars
from repsub.sweep.plan import plan_data_shards
from repsub.sweep.work import ShardRunner
from tests.sweep_helpers import small_sweep_config

LAYERS = ["conv1", "conv2", "fc5"]


def exemplar_columns(run, layer):
    rows = run.exemplar_rows.to_table(filter=pc.field("layer") == layer)
    return {name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names}


def brute_force_rows(values: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """The exemplars table of one layer from its per-image activations [images, units], by numpy lexsort."""
    index = np.arange(len(values))
    rows = {"unit": [], "side": [], "rank": [], "image_index": [], "label": [], "activation": []}
    for unit in range(values.shape[1]):
        for side, key in (("top", -values[:, unit]), ("bottom", values[:, unit])):
            order = np.lexsort((index, key))[:k]
            rows["unit"] += [unit] * len(order)
            rows["side"] += [side] * len(order)
            rows["rank"] += list(range(len(order)))
            rows["image_index"] += order.tolist()
            rows["label"] += labels[order].tolist()
            rows["activation"] += values[order, unit].tolist()
    return {name: np.asarray(column) for name, column in rows.items()}


def test_selectivity_writes_the_exemplars_of_its_own_pass(tmp_path, image_folder_dir):
    model = load_model("shallow_cnn", weights="random", seed=0, num_classes=3)
    out = tmp_path / "run"
    repsub.selectivity(model=model, data=image_folder_dir, out=out, image_size=16, layers=LAYERS, batch_size=4,
                       workers=0, progress=False, save_activations=LAYERS, exemplars=5)  # fmt: skip
    run = repsub.open_run(out)
    assert run.manifest["commands"]["selectivity"]["config"]["exemplars"] == 5
    activations = run.activations.to_table()
    referenced = set()
    for layer in LAYERS:
        per_image = activations.filter(pc.field("layer") == layer).sort_by("image_index")
        values = np.array(per_image.column("activations").to_pylist(), dtype=np.float32)
        labels = per_image.column("label").to_numpy()
        expected = brute_force_rows(values, labels, 5)  # from the same pass's stored activations
        got = exemplar_columns(run, layer)
        for name, column in expected.items():
            np.testing.assert_array_equal(
                got[name], column.astype(got[name].dtype), err_msg=f"{layer} {name}"
            )
        assert set(got["command"]) == {"selectivity"}
        referenced |= set(got["image_index"].tolist())

    # The thumbnails: each image the exemplars or the bands' samples refer to, once, the source's image as the
    # model saw it (JPEG: close)
    referenced |= {i for sample in run.band_rows.to_table().column("sample").to_pylist() for i in sample}
    images = run.images.to_table().sort_by("image_index")
    assert images.column("image_index").to_pylist() == sorted(referenced)
    dataset = image_folder(image_folder_dir, 16, model.mean, model.std)
    frame = run.exemplars("fc5", 2)
    assert (
        frame["side"].tolist() == ["top"] * 5 + ["bottom"] * 5 and frame["rank"].tolist() == [*range(5)] * 2
    )
    assert list(frame["activation"][:5]) == sorted(frame["activation"][:5], reverse=True)
    for _, row in frame.iterrows():
        tensor, label = dataset[int(row["image_index"])]
        assert row["label"] == label and row["class"] == dataset.classes[label]
        seen = (tensor * torch.tensor(model.std).view(3, 1, 1) + torch.tensor(model.mean).view(3, 1, 1)) * 255
        pixels = np.asarray(row["image"], dtype=np.float64)
        assert pixels.shape == (16, 16, 3)
        assert np.abs(pixels - seen.clamp(0, 255).permute(1, 2, 0).numpy()).mean() < 6  # JPEG q90 error
    bottom = run.exemplars("fc5", 2, side="bottom", images=False)
    assert bottom["rank"].tolist() == list(range(5)) and "image" not in bottom.columns
    with pytest.raises(RunError, match="layers with exemplars: conv1, conv2, fc5"):
        run.exemplars("fc6", 0)
    with pytest.raises(UsageError, match="valid sides: top, bottom"):
        run.exemplars("fc5", 0, side="middle")


def test_cli_exemplars_option(tmp_path, image_folder_dir, capsys):
    common = ["selectivity", "--model", "shallow_cnn", "--weights", "random", "--seed", "0", "--data",
              str(image_folder_dir), "--image-size", "16", "--layers", "fc5", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a"), "--exemplars", "3"]) == 0
    rows = repsub.open_run(tmp_path / "a").exemplar_rows.to_table()
    units = load_model("shallow_cnn", weights="random", seed=0).layer("fc5").n_units
    assert rows.num_rows == units * 2 * 3
    assert main([*common, "--out", str(tmp_path / "b"), "--exemplars", "0", "--no-bands"]) == 0
    run = repsub.open_run(tmp_path / "b")
    assert run.exemplar_rows is None and run.images is None
    assert "exemplars" not in run.manifest["commands"]["selectivity"]["config"]
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "c"), "--exemplars", "-1"]) == 2
    assert "--exemplars must be at least 0, got -1" in capsys.readouterr().err


def test_data_shards_merge_into_the_unsharded_pass_exactly(tmp_path, image_folder_dir, capsys):
    # Shards of 8 images in batches of 4: the same batches as the single pass, in the same process, so the
    # activations are bit-equal and the merged exemplars must be too (values, indices, labels).
    config = small_sweep_config(tmp_path / "sweep", image_folder_dir, layers=LAYERS, selectivity_batch=4,
                                images_per_shard=8, methods=["am"])  # fmt: skip
    config = config.__class__(**{**config.__dict__, "selectivity": config.selectivity.__class__(
        **{**config.selectivity.__dict__, "exemplars": 4})})  # fmt: skip
    runner = ShardRunner(config)
    shards = plan_data_shards(21, 8)
    for shard in random.Random(0).sample(shards, len(shards)):  # the Ray actors' code, in any order
        runner.run_data_shard(shard)
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    merged = merge_partial_exemplars(ledger, shards)
    single = tmp_path / "single"
    repsub.selectivity(model=runner.model, data=image_folder_dir, out=single, image_size=16, layers=LAYERS,
                       batch_size=4, workers=0, progress=False, exemplars=4)  # fmt: skip
    run = repsub.open_run(single)
    for layer in LAYERS:
        got = exemplar_columns(run, layer)
        for side in ("top", "bottom"):
            fields = merged.side(layer, side)
            mask = got["side"] == side
            for name, column in (("values", "activation"), ("index", "image_index"), ("labels", "label")):
                expected = fields[name].numpy().T.reshape(-1)  # [units, k] in unit, rank order
                np.testing.assert_array_equal(got[column][mask], expected, err_msg=f"{layer} {side} {name}")
    # A shard whose exemplars file is damaged is computed again, as one whose sums are
    path = tmp_path / "sweep" / ledger.partial_exemplars_path(shards[1].id)
    path.write_bytes(path.read_bytes()[:-10])
    assert ledger.verified_done() == {shards[0].id, shards[2].id}
    assert f"{path} holds" in capsys.readouterr().err


def test_interpretability_command_writes_the_seeded_index_of_every_unit(tmp_path, capsys):
    # The index stored per unit is checked against repsub.core.interpretability applied to the unit's stored
    # exemplars (read back with Run.exemplars), independently of the command's grouping of the rows. The
    # index's own values (1.0 for a one-class unit, 0.5 for random ones) are tested in test_interpretability.py.
    from repsub.core.interpretability import labels_similarity, two_afc_index, unit_rng
    from repsub.data.synthetic import make_image_folder

    data = make_image_folder(tmp_path / "images", num_classes=3, images_per_class=12, size=20)
    out = tmp_path / "run"
    repsub.selectivity(model="shallow_cnn", weights="random", seed=0, data=data, out=out, image_size=16,
                       layers=["fc5"], batch_size=8, workers=0, progress=False, exemplars=12)  # fmt: skip
    assert main(["interpretability", str(out), "--similarity", "labels", "--no-progress"]) == 0
    assert "interpretability index of" in capsys.readouterr().out
    assert main(["interpretability", str(out), "--similarity", "pixels", "--no-progress"]) == 0
    run = repsub.open_run(out)
    table = run.interpretability.to_table().sort_by([("similarity", "ascending"), ("unit", "ascending")])
    units = load_model("shallow_cnn", weights="random", seed=0).layer("fc5").n_units
    assert table.num_rows == 2 * units and set(table.column("similarity").to_pylist()) == {"labels", "pixels"}
    index = table.column("index").to_numpy()
    assert ((index >= 0) & (index <= 1)).all()
    for unit in (0, units - 1):  # the stored index equals the core function on the unit's stored exemplars
        frame = run.exemplars("fc5", unit, images=False)
        top, bottom = frame[frame["side"] == "top"]["label"], frame[frame["side"] == "bottom"]["label"]
        expected = two_afc_index(
            top.to_numpy(), bottom.to_numpy(), labels_similarity, unit_rng(0, "fc5", unit)
        )
        assert table.column("index")[unit].as_py() == expected
    again = repsub.interpretability(out, similarity="labels", progress=False)  # seeded: the same again
    assert again.column("index").to_pylist() == table.column("index").to_pylist()[:units]
    with pytest.raises(UsageError, match="'ssim'; valid similarities: labels, pixels, features, lpips"):
        repsub.interpretability(out, similarity="ssim")


def test_thumbnails_are_replaced_under_a_new_name_in_one_snapshot(tmp_path, image_folder_dir):
    """A second pass over other layers stores its thumbnails as a new file and retires the old one: a reader
    holding the first snapshot keeps reading it, the new snapshot lists one images file."""
    model = load_model("shallow_cnn", weights="random", seed=0, num_classes=3)
    out = tmp_path / "run"
    common = {"model": model, "data": image_folder_dir, "out": out, "image_size": 16, "batch_size": 4,
              "workers": 0, "progress": False, "exemplars": 2}  # fmt: skip
    repsub.selectivity(layers=["conv1"], **common)
    first = repsub.open_run(out)
    (old,) = first.files("images")
    before = first.images.to_table().sort_by("image_index")
    repsub.selectivity(layers=["fc5"], **common)
    second = repsub.open_run(out)
    (new,) = second.files("images")
    retired = second.manifest["retired"]
    assert new != old and any(old.endswith("/" + path) for path in retired)  # retired, not overwritten
    assert first.images.to_table().sort_by("image_index").equals(before)  # the old snapshot reads as it was
    referenced = set(second.exemplar_rows.to_table().column("image_index").to_pylist())
    assert referenced <= set(second.images.to_table().column("image_index").to_pylist())
