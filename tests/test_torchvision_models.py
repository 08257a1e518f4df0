"""torchvision's classification models by name: the catalog of every one (meta device), real forwards of a sample
of families at small sizes, a residual block's capture against a manual forward, and the whole CLI flow (layers,
selectivity, visualize AM and IAM, report) for resnet18 and mobilenet_v3_small with random weights."""

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision

from repsub.capture.reader import LayerCapture
from repsub.cli import main
from repsub.errors import UsageError
from repsub.models import KINDS, MODELS, READS, catalog, catalog_index, load_model, model_catalog
from repsub.runstore.writer import RunWriter

ALL_MODELS = torchvision.models.list_models(module=torchvision.models)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_the_catalog_builds_for_every_torchvision_model(name):
    layers = catalog(name)
    assert len(layers) >= 5 and len({layer.name for layer in layers}) == len(layers)
    assert all(layer.n_units > 0 and layer.kind in KINDS and layer.read in READS for layer in layers)
    assert [layer.order for layer in layers] == sorted(layer.order for layer in layers)  # forward order
    assert all((layer.relu is not None) == (layer.read in ("relu", "block")) for layer in layers)
    assert layers[-1].read == "logits" and layers[-1].n_units == 1000
    if name.startswith(("resnet", "resnext", "wide_resnet", "regnet")):
        assert layers[0].name == "stem" and {layer.read for layer in layers[1:-1]} == {"block"}
    if name.startswith("vgg"):
        assert {layer.read for layer in layers[:-1]} == {"relu"} and layers[-3:][0].name == "fc6"
    # `repsub layers` answers from the shipped index without torch: it must be the live catalog.
    index = catalog_index.load()
    assert index is not None, (
        "repsub/models/catalog_index.json is missing or stale: python -m repsub.models.catalog_index"
    )
    assert index["catalogs"][name] == catalog_index.layer_rows(layers), (
        "stale: python -m repsub.models.catalog_index"
    )


def test_the_index_lists_every_registered_model():
    index = catalog_index.load()
    assert index["models"] == catalog_index.model_rows() and set(index["catalogs"]) == set(MODELS)


def test_catalog_names_and_reads_of_some_families():
    assert [layer.name for layer in catalog("resnet18")] == [
        "stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1", "fc"
    ]  # fmt: skip
    assert [layer.n_units for layer in catalog("resnet50")][1:4] == [256, 256, 256]  # bottleneck outputs
    swin = catalog("swin_t")
    assert (
        swin[0].kind == "nhwc" and swin[0].n_units == 96
    )  # [B, 56, 56, 96]: channels last, told by the probe
    vit = catalog("vit_b_16")
    assert vit[0].name == "encoder.layers.encoder_layer_0" and (vit[0].kind, vit[0].n_units) == (
        "tokens",
        768,
    )
    assert [layer.name for layer in catalog("vgg11")][:3] == ["conv1_1", "conv2_1", "conv3_1"]
    assert catalog("inception_v3")[0].name == "Conv2d_1a_3x3" and catalog("googlenet")[-1].name == "fc"


SAMPLE = [
    ("resnet18", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64), ("regnet_x_400mf", 64),
    ("shufflenet_v2_x0_5", 64), ("squeezenet1_1", 64), ("alexnet", 64),
    ("swin_t", 224), ("vit_b_32", 224),
]  # fmt: skip


@pytest.mark.parametrize(("name", "size"), SAMPLE)
def test_a_real_forward_reads_every_catalog_layer(name, size):
    model = load_model(name, "random", seed=0, num_classes=10)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        read = LayerCapture(model.module, model.layers, reduce="max")(x).activations
        logits = model.module(x)
    assert list(read) == [layer.name for layer in model.layers]
    for layer in model.layers:
        assert read[layer.name].shape == (2, layer.n_units) and torch.isfinite(read[layer.name]).all(), (
            layer.name
        )
        if layer.after_relu:
            assert (read[layer.name] >= 0).all(), layer.name
    torch.testing.assert_close(read[model.layers[-1].name], logits.flatten(1))  # the logits are the output


def test_a_residual_block_capture_equals_a_manual_forward():
    model = load_model("resnet18", "random", seed=0, num_classes=10)
    net = model.module
    layers = model.select(["fc", "layer2.0", "stem", "layer2.0.relu"])
    assert [layer.name for layer in layers] == ["stem", "layer2.0.relu", "layer2.0", "fc"]  # forward order
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = LayerCapture(net, layers, pre=True)(x)
        post, pre = got.activations, got.pre
        stem = F.relu(net.bn1(net.conv1(x)))  # by hand, without inplace ops
        h = net.layer1(net.maxpool(stem))
        block = net.layer2[0]
        summed = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(h))))) + block.downsample(h)
        logits = net(x)
    torch.testing.assert_close(post["stem"], stem.mean(dim=(2, 3)))
    torch.testing.assert_close(post["layer2.0"], F.relu(summed).mean(dim=(2, 3)))
    torch.testing.assert_close(pre["layer2.0"], summed.mean(dim=(2, 3)))  # the final ReLU's input (2nd call)
    torch.testing.assert_close(post["layer2.0.relu"], post["layer2.0"])  # BasicBlock's ReLU: its last call
    torch.testing.assert_close(post["fc"], logits)
    assert (pre["layer2.0"] < 0).any() and "fc" not in pre


def test_image_sizes_a_model_cannot_take_are_refused():
    import repsub

    with pytest.raises(UsageError, match="vit_b_16 takes 224 px images only, not 64"):
        repsub.visualize(
            model="vit_b_16", layers=["heads.head"], units="0", steps=1, image_size=64, progress=False
        )
    with pytest.raises(UsageError, match="inception_v3 takes images of 75 px or more, not 32"):
        repsub.visualize(
            model="inception_v3", layers=["fc"], units="0", steps=1, image_size=32, progress=False
        )


def test_the_layers_command(capsys):
    assert main(["layers", "--model", "resnet18"]) == 0
    lines = {line.split()[0]: " ".join(line.split()) for line in capsys.readouterr().out.splitlines()}
    assert lines["stem"] == "stem 64 conv after ReLU relu"
    assert lines["layer2.0"] == "layer2.0 128 conv block output (after its final ReLU) layer2.0"
    assert lines["fc"] == "fc 1000 linear logits fc" and lines["total"] == "total 2984"
    assert main(["layers", "--model", "resnet18", "--modules", "--json"]) == 0
    modules = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert modules["layer1.0.conv1"] == {"name": "layer1.0.conv1", "units": 64, "module": "layer1.0.conv1",
                                        "kind": "conv", "read": "module"}  # fmt: skip
    assert modules["layer2.0"]["read"] == "block" and "relu" not in modules  # the stem's ReLU is named stem
    assert main(["layers", "--list-models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert set(ALL_MODELS) | {"shallow_cnn", "mlp"} == set(listed)
    assert listed["resnet50"]["weights"] == [
        "random",
        "imagenet",
        "DEFAULT",
        "IMAGENET1K_V1",
        "IMAGENET1K_V2",
    ]
    assert main(["layers", "--model", "resnet9"]) == 2
    assert "unknown model 'resnet9'" in capsys.readouterr().err


def test_layers_given_by_module_name_in_a_sweep_config():
    from repsub.sweep import parse_config

    config = parse_config(
        {"model": "resnet18", "out": "/tmp/x", "layers": ["layer1.0.conv1", "relu", "stem"]}
    )
    assert config.layers == (
        "stem",
        "layer1.0.conv1",
    )  # a catalog layer's module is that layer; forward order
    with pytest.raises(
        UsageError, match=r"unknown layer\(s\) layer9 for resnet18; valid layers: stem, layer1.0"
    ):
        parse_config({"model": "resnet18", "out": "/tmp/x", "layers": ["layer9"]})


FLOWS = [
    ("resnet18", "stem,layer2.0,layer3.1.conv1,fc", ["layer2.0", "layer3.1.conv1"]),
    (
        "mobilenet_v3_small",
        "features.1,features.4.block.0,classifier.3",
        ["features.4.block.0", "classifier.3"],
    ),
]


@pytest.mark.parametrize(("name", "layers", "optimized"), FLOWS)
def test_selectivity_visualize_and_report(name, layers, optimized, tmp_path, image_folder_dir, capsys):
    import repsub

    run = tmp_path / "run"
    common = ["--model", name, "--out", str(run), "--no-progress", "--image-size", "32"]
    assert main(["selectivity", *common, "--data", str(image_folder_dir), "--layers", layers,
                 "--batch-size", "8", "--workers", "0"]) == 0  # fmt: skip
    for method in ("am", "iam"):
        assert main(["visualize", *common, "--method", method, "--layers", ",".join(optimized), "--units", "0-2",
                     "--steps", "2", "--batch-size", "4", "--precision", "fp32"]) == 0  # fmt: skip
    manifest = RunWriter(run).read_manifest()
    records = {r["name"]: r for r in manifest["catalog"]}
    wanted = layers.split(",")
    assert set(wanted) <= set(records)  # module layers of the selectivity command kept by later commands
    assert [r["name"] for r in sorted(manifest["catalog"], key=lambda r: r["depth"])] == [
        layer.name for layer in model_catalog(name).select(records)
    ]  # depth: forward order
    assert records[wanted[-1]]["read"] == "logits" and records[optimized[0]]["kind"] == "conv"
    if name == "resnet18":
        assert records["layer2.0"]["read"] == "block" and records["layer3.1.conv1"]["read"] == "module"
    identity = manifest["model"]
    assert identity["model"] == name and identity["architecture"].startswith("torchvision.models.")
    assert identity["preprocessing"]["image_size"] == 224

    opened = repsub.open_run(run)
    assert sorted(set(opened.selectivity.to_table()["layer"].to_pylist())) == sorted(wanted)
    units = opened.units.to_table(columns=["method", "layer", "unit"]).to_pylist()
    assert len(units) == 2 * 2 * 3
    capsys.readouterr()
    assert main(["report", str(run), "--resamples", "50"]) == 0
    assert (run / "report" / "report.html").is_file()


def test_the_weights_resize_proportion_reaches_the_imagefolder_and_beton_paths_alike(tmp_path):
    """ResNet-50's IMAGENET1K_V2 resize 232 for a 224 crop: at S = 64, the shorter side goes to
    round(64 * 232 / 224) = 66 before the crop, in the ImageFolder transform and in the .beton decoder (bit for
    bit from a file prepared at that resolution)."""
    from repsub.data.beton import BetonSource
    from repsub.data.prepare import prepare_beton
    from repsub.data.sources import ImageFolderSource
    from repsub.data.synthetic import make_image_folder

    model = load_model("resnet50", "random", num_classes=2)
    assert model.resize_ratio == (29, 28)
    folder = make_image_folder(tmp_path / "images", 2, 3, size=80)
    source = ImageFolderSource(folder, 64, model.mean, model.std, model.resize_ratio)
    assert source.dataset.transform.transforms[0].size == 66 and source.describe()["resize"] == 66
    prepare_beton(folder, tmp_path / "s64.beton", max_resolution=66, workers=1, progress=False)
    beton = BetonSource(tmp_path / "s64.beton", 64, model.mean, model.std, model.resize_ratio)
    (x, y), (x_ref, y_ref) = next(beton.batches(8, workers=1)), next(source.batches(8, workers=0))
    assert x.shape == (6, 3, 64, 64) and torch.equal(x, x_ref) and torch.equal(y, y_ref)
