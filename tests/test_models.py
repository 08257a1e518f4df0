import json

import pytest
import torch

from repsub.cli import main
from repsub.errors import UsageError
from repsub.models import catalog, load_model, select_layers

VGG16_UNITS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 4096, 4096, 1000]


def test_vgg16_catalog():
    layers = catalog("vgg16")
    assert [layer.name for layer in layers][:3] == ["conv1_1", "conv1_2", "conv2_1"]
    assert [layer.units for layer in layers] == VGG16_UNITS
    assert sum(VGG16_UNITS[:13]) == 4224  # the conv units of a full sweep
    assert all(layer.after_relu for layer in layers[:-1]) and not layers[-1].after_relu


def test_paper_models_catalog():
    assert [layer.units for layer in catalog("shallow_cnn")] == [64, 64, 128, 128, 128, 10]
    assert [layer.units for layer in catalog("mlp")] == [128, 512, 2048, 2048, 10]


def test_layers_json(capsys):
    assert main(["layers", "--model", "vgg16", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0] == {"name": "conv1_1", "units": 64} and [d["units"] for d in listed] == VGG16_UNITS


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(UsageError, match="conv9_9.*valid layers: conv1, conv2"):
        select_layers(catalog("shallow_cnn"), ["conv1", "conv9_9"], "shallow_cnn")


def test_random_weights_are_seeded():
    a, b, c = (load_model("shallow_cnn", "random", seed=s) for s in (1, 1, 2))
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256


def test_weights_from_a_state_dict_file(tmp_path):
    source = load_model("shallow_cnn", "random", seed=3, num_classes=7)
    path = tmp_path / "w.pt"
    torch.save(source.module.state_dict(), path)
    loaded = load_model("shallow_cnn", str(path))
    assert loaded.num_classes == 7 and loaded.weights_sha256 == source.weights_sha256
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.module(x), source.module(x))
    assert not loaded.module.training


def test_bad_weights_are_refused_clearly(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_model("mlp", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot load weights from .*junk.pt"):
        load_model("mlp", str(tmp_path / "junk.pt"))
    torch.save(load_model("shallow_cnn", "random").module.state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(UsageError, match="not a mlp state_dict"):
        load_model("mlp", str(tmp_path / "cnn.pt"))
    with pytest.raises(UsageError, match="only for vgg16"):
        load_model("mlp", "imagenet")


def test_unit_selections():
    from repsub.units import parse_units, units_within

    assert parse_units("0-3,7,2", 10, "l") == [0, 1, 2, 3, 7]
    assert parse_units(None, 3, "l") == [0, 1, 2]
    with pytest.raises(UsageError, match=r"layer l has units 0-9; out of range: \[10, 11"):
        parse_units("5-99999999999", 10, "l")  # refused without materializing the range
    with pytest.raises(UsageError, match="ascending"):
        parse_units("5-2", 10, "l")
    with pytest.raises(UsageError, match="expected ranges"):
        parse_units("a-b", 10, "l")
    assert units_within("8-99999999999", 10) == [8, 9] and units_within(None, 2) == [0, 1]


def test_imagenet_weights_load_through_torchvisions_weights_api(tmp_path, monkeypatch, vgg16_random):
    """The real `--weights imagenet` path (torchvision's VGG16_Weights.IMAGENET1K_V1), fed from torch's hub
    cache: the weights file is where torchvision would have downloaded it (with stand-in values)."""
    from pathlib import Path

    from torchvision.models import VGG16_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.save(vgg16_random.module.state_dict(), cached)
    loaded = load_model("vgg16", "imagenet")
    assert loaded.weights == "imagenet" and loaded.num_classes == 1000
    assert loaded.weights_sha256 == vgg16_random.weights_sha256
