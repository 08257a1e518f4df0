"""`repsub prepare`: ImageFolder and flat+labels layouts to .beton, bad files reported, totals exact."""

import argparse
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from repsub.data import prepare
from repsub.data.beton import BetonSource, import_ffcv, sidecar_path
from repsub.data.prepare import add_prepare_parser, cmd_prepare, files_index_path, prepare_beton
from repsub.data.synthetic import make_image_folder
from repsub.errors import DataError, UsageError
from repsub.models import IMAGENET_MEAN, IMAGENET_STD

# FFCV's compiled decoders make numba print a harmless KeyError when they are garbage collected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def run_prepare(*argv):
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    return cmd_prepare(parser.parse_args(["prepare", *argv, "--no-progress"]))


def labels_of(beton, size=32):
    source = BetonSource(beton, size, IMAGENET_MEAN, IMAGENET_STD)
    return source, [int(y) for _, labels in source.batches(64, workers=1) for y in labels]


@pytest.fixture
def messy_folder(tmp_path):
    """3 classes x 5 JPEGs (40 px), one JPEG truncated and one text file among the images: 16 files."""
    root = make_image_folder(tmp_path / "images", num_classes=3, images_per_class=5, size=40, fmt="jpg")
    truncated = root / "class_01" / "img_0002.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (root / "class_02" / "notes.txt").write_text("not an image\n")
    (root / "class_00" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, not counted
    return root, truncated, root / "class_02" / "notes.txt"


def test_bad_files_are_reported_and_skipped(messy_folder, tmp_path, capsys):
    root, truncated, text = messy_folder
    out = tmp_path / "out" / "train.beton"
    run_prepare("--images", str(root), "--out", str(out), "--workers", "2", "--max-resolution", "37")
    printed = capsys.readouterr().out
    assert "found 16 images in 3 classes" in printed
    assert "total: 14 written + 2 skipped = 16 found" in printed
    assert f"{truncated}: " in printed and f"{text}: " in printed
    source, labels = labels_of(out)
    assert len(source) == 14 and labels == [0] * 5 + [1] * 4 + [2] * 5
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["classes"] == ["class_00", "class_01", "class_02"] == source.classes
    assert sidecar["images"] == 14 and sidecar["images_per_class"] == [5, 4, 5]
    assert sidecar["source"]["found"] == 16
    assert {s["path"] for s in sidecar["source"]["skipped"]} == {str(truncated), str(text)}
    assert sidecar["options"]["write_mode"] == "raw" and sidecar["options"]["max_resolution"] == 37
    index = pq.read_table(files_index_path(out)).to_pydict()
    assert index["image_index"] == list(range(14)) and index["label"] == labels
    assert "class_01/img_0002.jpg" not in index["path"] and index["path"][5] == "class_01/img_0000.jpg"
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "train.beton",
        "train.beton.files.parquet",
        "train.beton.json",
    ]  # no staging file left


def test_strict_fails_naming_the_file(messy_folder, tmp_path):
    root, truncated, text = messy_folder
    out = tmp_path / "strict.beton"
    with pytest.raises(DataError) as err:
        run_prepare("--images", str(root), "--out", str(out), "--strict", "--workers", "1")
    assert str(truncated) in str(err.value) and str(text) in str(err.value)
    assert "nothing written" in str(err.value)
    assert list(tmp_path.glob("*strict*")) == [] and list(tmp_path.glob(".*")) == []


@pytest.fixture
def flat_folder(tmp_path):
    """ImageNet-val-like: images in one folder, their classes in a labels file."""
    classed = make_image_folder(tmp_path / "classed", num_classes=3, images_per_class=3, size=24)
    flat = tmp_path / "val"
    flat.mkdir()
    synsets = ["n02000000", "n01000000", "n03000000"]  # sorted order differs from the folders' order
    truth = {}
    for number, path in enumerate(sorted(classed.rglob("*.png"))):
        name = f"val_{(number * 7) % 9:04d}.png"  # file-name order differs from generation order
        shutil.copy(path, flat / name)
        truth[name] = int(path.parent.name[-2:])
    (flat / "stray.png").write_bytes((flat / "val_0000.png").read_bytes())  # no label line
    return flat, synsets, truth


def test_flat_folder_with_synset_labels(flat_folder, tmp_path, capsys):
    flat, synsets, truth = flat_folder
    labels = tmp_path / "labels.csv"
    lines = ["filename,class"] + [f"{name},{synsets[c]}" for name, c in truth.items()]
    labels.write_text("\n".join([*lines, "val_0099.png,n01000000", ""]))  # one listed file is missing
    out = tmp_path / "val.beton"
    run_prepare("--images", str(flat), "--labels", str(labels), "--out", str(out), "--max-resolution", "0")
    captured = capsys.readouterr()
    assert "total: 9 written + 1 skipped = 10 found" in captured.out
    assert "val_0099.png: FileNotFoundError" in captured.out
    assert "1 file(s) have no line in the labels file" in captured.err and "stray.png" in captured.err
    source, read = labels_of(out)
    assert source.classes == sorted(synsets)
    expected = [sorted(synsets).index(synsets[truth[name]]) for name in sorted(truth)]
    assert read == expected
    assert pq.read_table(files_index_path(out)).column("path").to_pylist() == sorted(truth)


def test_flat_folder_with_indices_and_a_class_list(flat_folder, tmp_path):
    flat, synsets, truth = flat_folder
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{name},{c}\n" for name, c in truth.items()))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(synsets) + "\n")
    out = tmp_path / "val.beton"
    report = prepare_beton(flat, out, labels=labels, classes=classes, workers=1, progress=False)
    assert (report.found, report.written, report.skipped) == (9, 9, [])
    source, read = labels_of(out)
    assert source.classes == synsets and read == [truth[name] for name in sorted(truth)]
    with pytest.raises(DataError, match="no line in --labels"):  # --strict: the stray file is an error
        prepare_beton(flat, out, labels=labels, strict=True, progress=False)


@pytest.mark.parametrize(
    "content, message",
    [
        ("a.png,n01\nb.png,3\n", "is a name where other lines give indices"),
        ("a.png\n", "expected 'filename,class'"),
        ("a.png,1\na.png,2\n", "listed twice"),
    ],
)
def test_bad_labels_files(flat_folder, tmp_path, content, message):
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    with pytest.raises(DataError, match=message):
        prepare_beton(flat_folder[0], tmp_path / "x.beton", labels=labels, progress=False)


def test_usage_errors(messy_folder, tmp_path):
    root = messy_folder[0]
    with pytest.raises(UsageError, match="must end in .beton"):
        prepare_beton(root, tmp_path / "x.ffcv", progress=False)
    with pytest.raises(UsageError, match="write-mode"):
        prepare_beton(root, tmp_path / "x.beton", write_mode="webp", progress=False)
    with pytest.raises(DataError, match="class folder"):
        prepare_beton(root / "class_00", tmp_path / "x.beton", progress=False)


def test_a_writer_failure_is_an_error_not_a_hang(messy_folder, tmp_path, monkeypatch):
    """FFCV's writer waits forever when a worker dies; repsub's watches its workers."""
    root, truncated, text = messy_folder
    monkeypatch.setattr(prepare, "check_image", lambda task: (None, 40 * 40 * 3))  # let bad files through
    out = tmp_path / "broken.beton"
    with pytest.raises(DataError) as err:
        prepare_beton(root, out, workers=2, progress=False)
    message = str(err.value)  # the first worker to fail names its file
    assert "exited with status" in message and (str(truncated) in message or str(text) in message)
    assert list(tmp_path.glob("*broken*")) == [] and list(tmp_path.glob(".broken*")) == []


def test_proportion_mode_is_reproducible(tmp_path):
    """FFCV draws which images to compress from NumPy's global generator; repsub seeds it per image."""
    root = make_image_folder(tmp_path / "images", num_classes=2, images_per_class=12, size=24)
    _, _, reader_module, _ = import_ffcv()
    modes = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.beton"
        prepare_beton(root, out, write_mode="proportion", workers=2, progress=False)
        reader = reader_module.Reader(str(out))
        modes.append(reader.metadata["f0"]["mode"].tolist())
    assert modes[0] == modes[1] and 0 < sum(modes[0]) < len(modes[0])  # 1 = raw, 0 = jpg: a mix
    np.testing.assert_array_equal(*modes)
