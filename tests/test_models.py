import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from repsub.cli import main
from repsub.errors import RunError, UsageError
from repsub.models import (
    catalog,
    get_spec,
    load_model,
    model_catalog,
    parse_weights,
    select_layers,
    state_dict_sha256,
)
from repsub.models.weights import weights_preprocessing
from repsub.runstore.writer import RunWriter
from tests.run_helpers import record_command

VGG16_UNITS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 4096, 4096, 1000]


def test_vgg16_catalog():
    layers = catalog("vgg16")
    assert [layer.name for layer in layers][:3] == ["conv1_1", "conv1_2", "conv2_1"]
    assert [layer.name for layer in layers][-4:] == ["conv5_3", "fc6", "fc7", "fc8"]
    assert [layer.n_units for layer in layers] == VGG16_UNITS
    assert sum(VGG16_UNITS[:13]) == 4224  # the conv units of a full sweep
    assert all(layer.after_relu and layer.read == "relu" for layer in layers[:-1])
    assert not layers[-1].after_relu and layers[-1].read == "logits"
    # read at the ReLU modules (features.1 follows features.0, the first conv), the logits at the last Linear
    assert (layers[0].module, layers[0].relu, layers[-1].module) == (
        "features.1",
        "features.1",
        "classifier.6",
    )


def test_paper_models_catalog():
    cnn, mlp = catalog("shallow_cnn"), catalog("mlp")
    assert [(layer.name, layer.n_units) for layer in cnn] == [
        ("conv1", 64), ("conv2", 64), ("conv3", 128), ("conv4", 128), ("fc5", 128), ("fc6", 10)
    ]  # fmt: skip
    assert [(layer.name, layer.n_units) for layer in mlp] == [
        ("fc1", 128), ("fc2", 512), ("fc3", 2048), ("fc4", 2048), ("fc5", 10)
    ]  # fmt: skip
    assert [layer.kind for layer in cnn] == ["conv"] * 4 + ["linear"] * 2
    assert [layer.read for layer in mlp] == ["relu"] * 4 + ["logits"]


def test_layers_json(capsys):
    assert main(["layers", "--model", "vgg16", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0] == {
        "name": "conv1_1",
        "units": 64,
        "module": "features.1",
        "kind": "conv",
        "read": "relu",
    }
    assert [d["units"] for d in listed] == VGG16_UNITS and listed[-1]["read"] == "logits"


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(UsageError, match="conv9_9.*valid layers: conv1, conv2"):
        select_layers(catalog("shallow_cnn"), ["conv1", "conv9_9"], "shallow_cnn")
    with pytest.raises(
        UsageError, match=r"unknown layer\(s\) featurs.3 for shallow_cnn.*closest modules: features.3"
    ):
        model_catalog("shallow_cnn").select(["conv1", "featurs.3"])


def test_unknown_model_lists_valid_names():
    with pytest.raises(UsageError) as err:
        get_spec("resnet19")
    message = str(err.value)
    assert "unknown model 'resnet19'" in message and "shallow_cnn, mlp, vgg16" in message
    assert "--list-models" in message and "closest: resnet18" in message
    assert len(message) < 400  # not ~80 names


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


def test_the_same_weights_by_another_path_are_the_same_model(tmp_path, monkeypatch):
    """Identity is the content of the weights (issue 13.8), and a refusal says in words what differs (issue 12)."""
    (tmp_path / "w").mkdir()
    torch.save(load_model("shallow_cnn", "random", seed=3).module.state_dict(), tmp_path / "w" / "sc.pt")
    monkeypatch.chdir(tmp_path)
    relative, absolute = (
        load_model("shallow_cnn", "./w/sc.pt"),
        load_model("shallow_cnn", str(tmp_path / "w/sc.pt")),
    )
    writer = RunWriter(tmp_path / "run")
    record_command(writer, "selectivity", relative.identity(), {}, relative.catalog_records())
    writer.check_run(absolute.identity())  # the same model: accepted
    assert writer.read_manifest()["model"]["weights"] == "./w/sc.pt"  # the path stays, as information

    with pytest.raises(RunError) as err:
        writer.check_run(load_model("shallow_cnn", "random", seed=4).identity())
    message = str(err.value)
    assert "another model or weights" in message and "differ in weights:" in message
    assert "the run was made with --weights ./w/sc.pt" in message and "{" not in message  # words, not dicts
    with pytest.raises(RunError, match="differ in architecture and weights and classes"):
        writer.check_run(load_model("mlp", "random", num_classes=3).identity())


def test_bad_weights_are_refused_clearly(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_model("mlp", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot load weights from .*junk.pt"):
        load_model("mlp", str(tmp_path / "junk.pt"))
    torch.save(load_model("shallow_cnn", "random").module.state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(UsageError, match="not a mlp state_dict"):
        load_model("mlp", str(tmp_path / "cnn.pt"))
    with pytest.raises(
        UsageError, match="mlp has no weights 'imagenet'; valid weights for mlp: random, or a"
    ):
        load_model("mlp", "imagenet")
    with pytest.raises(UsageError, match="resnet18 has no weights 'IMAGENET1K_V2'.*DEFAULT, IMAGENET1K_V1"):
        load_model("resnet18", "IMAGENET1K_V2")
    state = load_model("resnet18", "random").module.state_dict()
    del state["layer1.0.bn1.running_mean"]
    torch.save(state, tmp_path / "r18.pt")
    with pytest.raises(
        UsageError, match=r"does not match model resnet18: missing 1 key\(s\) \(layer1.0.bn1.running_mean"
    ):
        load_model("resnet18", str(tmp_path / "r18.pt"))


def test_weights_names_follow_torchvisions_enums():
    from torchvision.models import ResNet50_Weights, VGG16_Weights

    assert parse_weights("vgg16", "imagenet", VGG16_Weights).enum is VGG16_Weights.IMAGENET1K_V1  # as before
    assert parse_weights("resnet50", "DEFAULT", ResNet50_Weights).enum is ResNet50_Weights.IMAGENET1K_V2
    assert parse_weights("resnet50", "IMAGENET1K_V1", ResNet50_Weights).enum is ResNet50_Weights.IMAGENET1K_V1
    assert parse_weights("resnet50", "random", ResNet50_Weights).random


def test_preprocessing_and_classes_come_from_the_weights_metadata():
    from torchvision.models import EfficientNet_V2_L_Weights, ResNet50_Weights

    v2 = weights_preprocessing(ResNet50_Weights.IMAGENET1K_V2)
    assert (v2.image_size, v2.resize_size, v2.resize_ratio) == (224, 232, (29, 28))
    assert weights_preprocessing(ResNet50_Weights.IMAGENET1K_V1).resize_ratio == (8, 7)  # 256/224
    effnet = weights_preprocessing(EfficientNet_V2_L_Weights.DEFAULT)
    assert (effnet.image_size, effnet.resize_size, effnet.mean, effnet.std) == (
        480,
        480,
        (0.5,) * 3,
        (0.5,) * 3,
    )
    # random weights take the preprocessing of the architecture's DEFAULT weights
    loaded = load_model("resnet50", "random", num_classes=5)
    assert (loaded.image_size, loaded.resize_ratio, loaded.num_classes) == (224, (29, 28), 5)
    assert loaded.identity()["preprocessing"]["resize_size"] == 232


def test_state_dict_hash_covers_0d_tensors_and_buffers():
    """BatchNorm's num_batches_tracked is a 0-d int64 buffer: hashed, not a crash (issue 11)."""
    bn = nn.BatchNorm2d(2)
    state = bn.state_dict()
    assert state["num_batches_tracked"].dim() == 0
    digest = state_dict_sha256(state)
    expected = hashlib.sha256()  # an independent computation of the documented format
    for key in sorted(state):
        t = state[key]
        expected.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        expected.update(t.numpy().tobytes())
    assert digest == expected.hexdigest()
    bn.num_batches_tracked += 1
    assert state_dict_sha256(bn.state_dict()) != digest  # buffers count
    assert len(load_model("resnet18", "random").weights_sha256) == 64


def test_unit_selections():
    from repsub.selection import parse_units, units_within

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
    from torchvision.models import VGG16_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / Path(VGG16_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.save(vgg16_random.module.state_dict(), cached)
    loaded = load_model("vgg16", "imagenet")
    assert loaded.weights == "imagenet" and loaded.num_classes == 1000
    assert loaded.weights_sha256 == vgg16_random.weights_sha256
    assert loaded.identity()["torchvision_weights"] == "VGG16_Weights.IMAGENET1K_V1"
    by_enum = load_model("vgg16", "IMAGENET1K_V1")
    assert by_enum.weights_sha256 == loaded.weights_sha256 and by_enum.weights == "IMAGENET1K_V1"


def test_torchvision_weights_of_another_family_through_the_cache(tmp_path, monkeypatch):
    """GoogLeNet through its weights enum: torchvision's builder loads the cached file (transform_input on, no
    auxiliary heads), and the same file given as a path is the same model, forward included."""
    from torchvision.models import GoogLeNet_Weights, googlenet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    stand_in = googlenet(weights=None, aux_logits=True, init_weights=True)  # torchvision's file has aux heads
    cached = tmp_path / "hub" / "checkpoints" / Path(GoogLeNet_Weights.DEFAULT.url).name
    cached.parent.mkdir(parents=True)
    torch.save(stand_in.state_dict(), cached)
    by_enum = load_model("googlenet", "DEFAULT")
    by_path = load_model("googlenet", str(cached))
    assert by_enum.weights_sha256 == by_path.weights_sha256 and by_path.num_classes == 1000
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(by_enum.module(x), by_path.module(x))
    assert by_enum.module.transform_input and by_enum.module.aux1 is None


def test_uncached_weights_with_the_network_closed_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # a closed port: no network
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    with pytest.raises(UsageError) as err:
        load_model("resnet18", "DEFAULT")
    message = str(err.value)
    assert "ResNet18_Weights.IMAGENET1K_V1 weights for resnet18 are not in torchvision's cache" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "--weights PATH" in message
