"""Your own nn.Module through the Python API, no registration: layers by module name, its input size and
normalization; clear errors for a module that does not exist or never runs."""

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
import torchvision
from torch import nn
from torchvision import transforms

import repsub
from repsub.errors import UsageError
from repsub.models import from_module, state_dict_sha256
from repsub.runstore.tables import decode_png
from repsub.runstore.writer import RunWriter

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


class TwoLayer(nn.Module):
    """A convolution with its ReLU, then a linear head; `unused` never runs."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Linear(4, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


def two_layer(seed: int = 0) -> TwoLayer:
    torch.manual_seed(seed)
    return TwoLayer()


def test_selectivity_of_a_custom_module_equals_a_hand_computation(image_folder_dir):
    model = two_layer()
    table = repsub.selectivity(
        model=model,
        layers=["relu", "head"],
        data=image_folder_dir,
        image_size=16,
        mean=MEAN,
        std=STD,
        batch_size=5,
        workers=0,
        progress=False,
        precision="fp32",
    )  # fmt: skip  (compared with a float32 forward)
    # By hand: the classic evaluation transform at 16 px (resize round(16 * 256 / 224) = 18, crop 16), the given
    # normalization, the two layers' outputs, per-class means.
    data = torchvision.datasets.ImageFolder(str(image_folder_dir), transform=transforms.Compose([
        transforms.Resize(18, antialias=True), transforms.CenterCrop(16), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ]))  # fmt: skip
    images = torch.stack([image for image, _ in data])
    labels = torch.tensor([label for _, label in data])
    with torch.no_grad():
        maps = torch.relu(model.conv(images))
        per_layer = {"relu": maps.mean(dim=(2, 3)), "head": model.head(maps.mean(dim=(2, 3)))}
    for name, acts in per_layer.items():
        expected = torch.stack([acts[labels == c].mean(dim=0) for c in range(3)]).double()
        rows = table.filter(pc.equal(table["layer"], name)).sort_by("unit")
        got = torch.tensor(np.array(rows["class_means"].to_pylist())).T  # [C, N]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_visualize_a_custom_module_records_it_and_its_images_reproduce(tmp_path):
    model = two_layer(1)
    run = tmp_path / "run"
    table = repsub.visualize(model=model, layers=["relu"], method="iam", units="0-3", steps=3, image_size=16,
                             mean=MEAN, std=STD, out=run, progress=False, precision="fp32")  # fmt: skip
    assert table.num_rows == 4 and set(table["layer"].to_pylist()) == {"relu"}
    identity = RunWriter(run).read_manifest()["model"]
    assert identity["model"] == identity["architecture"] == "test_custom_model.TwoLayer"
    assert identity["weights"] == "module" and identity["num_classes"] == 3
    assert identity["weights_sha256"] == state_dict_sha256(model.state_dict())
    assert identity["preprocessing"]["mean"] == list(MEAN) and identity["preprocessing"]["image_size"] == 16
    # The stored 8-bit image, normalized as given, through the module by hand: the recorded activations.
    for row in table.to_pylist():
        image = torch.from_numpy(decode_png(row["image"]).copy()).permute(2, 0, 1).float().div(255)[None]
        normalized = (image - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.no_grad():
            expected = torch.relu(model.conv(normalized)).mean(dim=(2, 3))[0]
        np.testing.assert_allclose(row["layer_activations"], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_torchvision_module_object_with_the_image_size_given():
    """The issue's first attempt: a hand-built torchvision model, image size given (the default size is not
    looked up before the override)."""
    torch.manual_seed(0)
    table = repsub.visualize(model=torchvision.models.resnet18(num_classes=5), layers=["layer1.0", "fc"],
                             method="am", units="0-1", steps=1, image_size=32, progress=False)  # fmt: skip
    assert sorted(table["layer"].to_pylist()) == ["fc", "fc", "layer1.0", "layer1.0"]


def test_unknown_unused_and_unreadable_modules_are_named():
    model = two_layer()
    with pytest.raises(UsageError) as err:
        from_module(model, layers=["relu2"], image_size=16)
    assert "unknown layer(s) relu2 for test_custom_model.TwoLayer" in str(err.value)
    assert "closest modules: relu" in str(err.value)
    with pytest.raises(
        UsageError, match="module unused of test_custom_model.TwoLayer never runs in the forward"
    ):
        from_module(model, layers=["unused"], image_size=16)
    with pytest.raises(UsageError, match="an nn.Module brings its own weights"):
        repsub.visualize(model=model, weights="imagenet", layers=["relu"], image_size=16, progress=False)
    with pytest.raises(UsageError, match="mean and std come with resnet18's weights"):
        repsub.visualize(model="resnet18", mean=MEAN, layers=["fc"], image_size=32, progress=False)
    with pytest.raises(UsageError, match="fails on a 16 px image.*give the input size it takes"):
        from_module(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), image_size=16)
    with pytest.raises(UsageError) as err:
        repsub.visualize(model=torchvision.models.resnet18, progress=False)  # the builder, not a model
    assert "unknown model '<function resnet18" in str(err.value)
    with pytest.raises(UsageError) as err:  # an object that prints on many lines is named by its type
        repsub.visualize(model=[torchvision.models.resnet18()], progress=False)
    assert "unknown model 'list object'" in str(err.value) and "ResNet(" not in str(err.value)


def test_a_custom_module_without_layers_gets_the_stages_rule():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                          nn.Flatten(), nn.Linear(6 * 5 * 5, 2))  # fmt: skip
    loaded = from_module(model, image_size=16)
    assert [(layer.name, layer.read, layer.n_units) for layer in loaded.layers] == [
        ("2", "relu", 4), ("4", "module", 6), ("6", "logits", 2)
    ]  # fmt: skip
    assert loaded.num_classes == 2 and loaded.layers[0].relu == "2"
