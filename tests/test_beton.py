"""The selectivity pass streaming a .beton with FFCV: same images and selectivity as the ImageFolder,
exact image counts, shards that merge into the single pass, and per-image activations as Arrow."""

import json

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

import repsub
from repsub.capture.reader import LayerCapture
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.cli import main
from repsub.data.beton import BetonSource, sidecar_path
from repsub.data.prepare import prepare_beton
from repsub.data.sources import ImageFolderSource, open_source
from repsub.data.synthetic import make_image_folder
from repsub.errors import DataError, UsageError
from repsub.models import IMAGENET_MEAN, IMAGENET_STD
from repsub.runstore import activations as activations_module

# FFCV's compiled decoders make numba print a harmless KeyError when they are garbage collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SIZE = 32  # S; images are stored with shorter side round(S*256/224) = 37, so FFCV crops S without resizing
N_IMAGES = 21  # 3 classes x 7: not a multiple of the batch sizes used


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """48 px PNGs (resized to 37 px by prepare, as torchvision's Resize(37) does on the ImageFolder path)."""
    return make_image_folder(tmp_path_factory.mktemp("beton") / "images", 3, 7, size=48)


@pytest.fixture(scope="module")
def beton(folder):
    out = folder.parent / "images.beton"
    prepare_beton(
        folder, out, max_resolution=round(SIZE * 256 / 224), write_mode="raw", workers=2, progress=False
    )
    return out


def sources(folder, beton):
    return (
        BetonSource(beton, SIZE, IMAGENET_MEAN, IMAGENET_STD),
        ImageFolderSource(folder, SIZE, IMAGENET_MEAN, IMAGENET_STD),
    )


def test_beton_batches_equal_the_imagefolder_bit_for_bit(folder, beton):
    ffcv, reference = sources(folder, beton)
    assert ffcv.classes == reference.classes and len(ffcv) == len(reference) == N_IMAGES
    got, expected = list(ffcv.batches(8, workers=2)), list(reference.batches(8, workers=0))
    assert len(got) == len(expected) == 3
    for (x, y), (x_ref, y_ref) in zip(got, expected, strict=True):
        assert x.dtype == torch.float32 and x.is_contiguous() and y.dtype == torch.int64
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_selectivity_from_beton_equals_imagefolder(folder, beton, shallow_random):
    """Same pixels, same float32 operations: equal (stated tolerance 1e-9 relative; in practice identical)."""
    common = dict(model=shallow_random, image_size=SIZE, batch_size=8, progress=False)
    from_beton = repsub.selectivity(data=beton, **common).to_pydict()
    from_folder = repsub.selectivity(data=folder, workers=0, **common).to_pydict()
    assert from_beton["layer"] == from_folder["layer"] and from_beton["dead"] == from_folder["dead"]
    np.testing.assert_allclose(from_beton["class_means"], from_folder["class_means"], rtol=1e-9, atol=0)
    np.testing.assert_allclose(
        from_beton["selectivity"], from_folder["selectivity"], rtol=1e-9, equal_nan=True
    )
    assert set(from_beton["n_images"]) == {N_IMAGES}


def test_every_image_once_whatever_the_batch_size(beton):
    source = BetonSource(beton, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    threads = torch.get_num_threads()
    for batch_size, sizes in [(4, [4, 4, 4, 4, 4, 1]), (8, [8, 8, 5]), (64, [21])]:
        batches = list(source.batches(batch_size, workers=2))
        assert [len(labels) for _, labels in batches] == sizes  # a last batch of one keeps its dimension
        assert all(x.shape == (n, 3, SIZE, SIZE) for (x, _), n in zip(batches, sizes, strict=True))
        assert torch.cat([labels for _, labels in batches]).tolist() == [0] * 7 + [1] * 7 + [2] * 7
    assert torch.get_num_threads() == threads  # FFCV sets torch's thread count; the source restores it


def test_indices_select_in_the_order_given(beton):
    source = BetonSource(beton, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    everything = torch.cat([x for x, _ in source.batches(64, workers=1)])
    order = [20, 0, 7, 13, 3]
    x, labels = next(iter(source.batches(64, indices=order, workers=1)))
    assert torch.equal(x, everything[order]) and labels.tolist() == [2, 0, 1, 1, 0]
    assert list(source.batches(8, indices=[])) == []
    with pytest.raises(DataError, match="outside"):
        list(source.batches(8, indices=[3, 21]))


def test_sharded_passes_merge_into_the_single_pass(beton, shallow_random):
    source = BetonSource(beton, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    layers = shallow_random.layers
    seen = {}

    def run(name, indices=None):
        def recorded():
            for x, y in source.batches(4, indices=indices, workers=2):
                seen.setdefault(name, []).append(x)
                yield x, y

        return accumulate_class_sums(shallow_random, layers, recorded(), 3, progress=False)

    even, odd = list(range(0, 21, 2)), list(range(1, 21, 2))  # interleaved shards: every batch differs
    single = run("single")
    merged = run("even", even).merge(run("odd", odd))
    assert torch.equal(merged.counts, single.counts) and merged.n_images == N_IMAGES
    everything = torch.cat(seen["single"])
    assert torch.equal(torch.cat(seen["even"] + seen["odd"]), everything[even + odd])  # the same images
    for layer in layers:
        # only the forward's float32 rounding differs with the batch's composition (~1e-8 of the sums)
        torch.testing.assert_close(merged.sums[layer.name], single.sums[layer.name], rtol=1e-5, atol=1e-6)


def test_saved_activations_equal_a_direct_forward(folder, beton, shallow_random, tmp_path, monkeypatch):
    monkeypatch.setattr(activations_module, "ROW_GROUP_BYTES", 4 * 128 * 5)  # fc5: 5 rows a group
    out = tmp_path / "run"
    repsub.selectivity(
        model=shallow_random,
        data=beton,
        image_size=SIZE,
        batch_size=8,
        out=out,
        save_activations="conv2,fc5",
        progress=False,
        precision="fp32",  # compared with a float32 forward (auto may choose bf16 on a CPU with fast AMX)
    )
    run = repsub.open_run(out)
    assert run.activations.count_rows() == 2 * N_IMAGES
    reference = ImageFolderSource(folder, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    images = torch.cat([x for x, _ in reference.batches(64, workers=0)])
    labels = [int(y) for _, ys in reference.batches(64, workers=0) for y in ys]
    layers = [shallow_random.layer("conv2"), shallow_random.layer("fc5")]
    with torch.no_grad():
        direct = LayerCapture(shallow_random.module, layers)(images).activations
    for name, units in (("conv2", 64), ("fc5", 128)):
        rows = run.activations.to_table(filter=ds.field("layer") == name).sort_by("image_index").to_pydict()
        assert rows["image_index"] == list(range(N_IMAGES)) and rows["label"] == labels
        got = np.array(rows["activations"], dtype=np.float32)
        assert got.shape == (N_IMAGES, units)
        np.testing.assert_allclose(got, direct[name].numpy(), rtol=1e-5, atol=1e-6)
    fc5 = pq.ParquetFile(out / "activations" / "layer=fc5" / "activations.parquet").metadata
    assert [fc5.row_group(i).num_rows for i in range(fc5.num_row_groups)] == [5, 5, 5, 5, 1]
    config = run.manifest["commands"]["selectivity"]["config"]
    assert config["save_activations"] == ["conv2", "fc5"]
    assert config["activations_row_group_rows"]["fc5"] == 5 and config["data"]["kind"] == "beton"
    assert not list(out.rglob(".tmp-*"))


def test_save_activations_needs_a_run_and_a_pass_layer(beton, shallow_random, tmp_path):
    common = dict(model=shallow_random, data=beton, image_size=SIZE, progress=False)
    with pytest.raises(UsageError, match="not among"):
        repsub.selectivity(layers=["conv1"], save_activations=["fc5"], out=tmp_path / "r", **common)
    with pytest.raises(UsageError, match="give --out"):
        repsub.selectivity(save_activations=["fc5"], **common)
    with pytest.raises(UsageError, match="unknown layer"):
        repsub.selectivity(save_activations=["conv9"], out=tmp_path / "r", **common)
    assert not (tmp_path / "r").exists()


def test_cli_selectivity_reads_a_beton(beton, tmp_path):
    out = tmp_path / "cli-run"
    argv = ["selectivity", "--model", "shallow_cnn", "--data", str(beton), "--image-size", str(SIZE)]
    assert (
        main([*argv, "--out", str(out), "--batch-size", "5", "--layers", "conv1,fc6", "--no-progress"]) == 0
    )
    config = repsub.open_run(out).manifest["commands"]["selectivity"]["config"]
    assert config["n_images"] == N_IMAGES and config["data"]["path"] == str(beton)


def test_bit_for_bit_at_a_size_where_224_over_256_would_be_off_by_one(tmp_path):
    """S=64: R=73 and int(224/256 * 73) = 63; the source's ratio (S + 0.5)/R crops 64 as torchvision does."""
    folder = make_image_folder(tmp_path / "images", 2, 3, size=80)
    prepare_beton(folder, tmp_path / "s64.beton", max_resolution=73, workers=1, progress=False)
    got = BetonSource(tmp_path / "s64.beton", 64, IMAGENET_MEAN, IMAGENET_STD).batches(8, workers=1)
    expected = ImageFolderSource(folder, 64, IMAGENET_MEAN, IMAGENET_STD).batches(8, workers=0)
    (x, y), (x_ref, y_ref) = next(got), next(expected)
    assert x.shape == (6, 3, 64, 64) and torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_jpg_and_resized_files_stay_close_to_the_imagefolder(folder, tmp_path):
    """JPEG storage, or images that FFCV must resize (stored at 48 px: crop 42 -> 32 px, INTER_AREA),
    are close to, not equal to, the ImageFolder path (PIL bilinear resize to 37, crop 32)."""
    folder_source = ImageFolderSource(folder, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    reference = torch.cat([x for x, _ in folder_source.batches(64, workers=0)])
    for name, options in (("jpg", dict(write_mode="jpg", jpeg_quality=95, max_resolution=37)),
                          ("full", dict(max_resolution=0))):  # fmt: skip
        out = tmp_path / f"{name}.beton"
        prepare_beton(folder, out, workers=1, progress=False, **options)
        got = torch.cat(
            [x for x, _ in BetonSource(out, SIZE, IMAGENET_MEAN, IMAGENET_STD).batches(64, workers=2)]
        )
        difference = (got - reference).abs()
        # In normalized units (1 = one std, about 57 levels of 255). The generated images carry per-pixel
        # noise, which JPEG and a different resize filter change most: measured 0.11 (jpg) and 0.21 (full).
        assert 0 < difference.mean() < {"jpg": 0.2, "full": 0.35}[name], name
        assert difference.max() < 2.5, name


def test_files_that_are_not_a_usable_beton(beton, tmp_path, capsys):
    junk = tmp_path / "junk.beton"
    junk.write_bytes(b"\x07" * 5000)
    with pytest.raises(DataError, match="not a readable FFCV .beton"):
        open_source(junk, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    copy = tmp_path / "copy.beton"
    copy.write_bytes(beton.read_bytes())
    source = BetonSource(copy, SIZE, IMAGENET_MEAN, IMAGENET_STD)  # no sidecar: classes named by index
    assert source.classes == ["0", "1", "2"] and "no sidecar" in capsys.readouterr().err
    sidecar = json.loads(sidecar_path(beton).read_text())
    sidecar_path(copy).write_text(json.dumps({**sidecar, "images": 5}))
    with pytest.raises(DataError, match="belongs to another file"):
        BetonSource(copy, SIZE, IMAGENET_MEAN, IMAGENET_STD)
