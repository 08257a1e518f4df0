"""Every CLI error of the contract: a clear message and exit status 2."""

import shutil

import pytest

from tests.cli_helpers import run_cli


def selectivity_cli(capsys, data, out, *extra):
    return run_cli(capsys, "selectivity", "--model", "shallow_cnn", "--data", data, "--out", out, "--no-progress",
                   *extra)  # fmt: skip


def visualize_cli(capsys, out, *extra):
    return run_cli(capsys, "visualize", "--model", "shallow_cnn", "--out", out, "--no-progress", *extra)


def test_unknown_model(capsys, tmp_path):
    code, text = run_cli(capsys, "layers", "--model", "resnet9000")
    assert code == 2 and "unknown model 'resnet9000'" in text and "vgg16" in text and "shallow_cnn" in text


def test_unknown_layer(capsys, tmp_path):
    code, text = visualize_cli(capsys, tmp_path / "r", "--method", "am", "--layers", "conv7", "--steps", "1")
    assert code == 2 and "unknown layer(s) conv7" in text and "conv1, conv2, conv3, conv4, fc5, fc6" in text
    assert not (tmp_path / "r").exists()


def test_unknown_method(capsys, tmp_path):
    code, text = visualize_cli(capsys, tmp_path, "--method", "xam")
    assert code == 2 and "'xam'" in text and "am" in text and "iam" in text


def test_out_of_range_units(capsys, tmp_path):
    code, text = visualize_cli(capsys, tmp_path / "r", "--method", "am", "--layers", "fc6", "--units", "5-12")
    assert code == 2 and "fc6 has units 0-9" in text and "[10, 11, 12]" in text


def test_unreadable_image_is_named(capsys, tmp_path, image_folder_dir):
    data = tmp_path / "data"
    shutil.copytree(image_folder_dir, data)
    bad = data / "class_01" / "broken.png"
    bad.write_bytes((data / "class_01" / "img_0000.png").read_bytes()[:60])  # truncated PNG
    code, text = selectivity_cli(capsys, data, tmp_path / "r", "--image-size", "16", "--workers", "0")
    assert code == 2 and f"unreadable image {bad}" in text


@pytest.mark.parametrize("classes", [0, 1])
def test_empty_or_one_class_dataset_is_refused(capsys, tmp_path, image_folder_dir, classes):
    data = tmp_path / "data"
    data.mkdir()
    if classes:
        shutil.copytree(image_folder_dir / "class_00", data / "class_00")
    code, text = selectivity_cli(capsys, data, tmp_path / "r")
    assert code == 2 and f"found {classes} class folder(s); selectivity needs two classes or more" in text


def test_class_folder_without_images_is_refused(capsys, tmp_path, image_folder_dir):
    data = tmp_path / "data"
    shutil.copytree(image_folder_dir, data)
    (data / "class_99").mkdir()
    code, text = selectivity_cli(capsys, data, tmp_path / "r")
    assert code == 2 and "class_99" in text


def test_missing_data_directory(capsys, tmp_path):
    code, text = selectivity_cli(capsys, tmp_path / "nope", tmp_path / "r")
    assert code == 2 and "no such file or directory" in text


def test_data_that_is_neither_folder_nor_beton(capsys, tmp_path):
    odd = tmp_path / "images.zip"
    odd.write_bytes(b"PK")
    code, text = selectivity_cli(capsys, odd, tmp_path / "r")
    assert code == 2 and f"--data {odd}: not an ImageFolder directory or a .beton file" in text


def test_hidden_folders_are_not_classes(tmp_path, image_folder_dir):
    from repsub.data.imagefolder import image_folder

    data = tmp_path / "data"
    shutil.copytree(image_folder_dir, data)
    shutil.copytree(data / "class_00", data / ".ipynb_checkpoints")
    dataset = image_folder(data, 16, (0, 0, 0), (1, 1, 1))
    assert dataset.classes == ["class_00", "class_01", "class_02"] and len(dataset) == 21
