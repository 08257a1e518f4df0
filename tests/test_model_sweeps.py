"""Sweeps of models beyond the paper's, on a real local Ray: resnet18 by name with a layer given by module name, and
a custom nn.Module given from Python (shipped to the workers with the config)."""

import numpy as np
import pyarrow.compute as pc
import pytest
import ray
import torch
from torch import nn

import repsub
from repsub.runstore.writer import RunWriter
from repsub.sweep import parse_config, run_sweep
from tests.sweep_helpers import start_local_ray, unit_rows


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    start_local_ray(tmp_path_factory.mktemp("ray"))
    yield
    ray.shutdown()


def small(out, model, layers, data=None, **extra):
    raw = {
        "model": model, "weights": "random", "seed": 5, "out": str(out), "layers": layers, "units": "0-3",
        "optimization": {"steps": 2, "image_size": 32, "batch_size": 4}, "sharding": {"units_per_shard": 2},
        "workers": {"count": 1, "cpus": 1}, **extra,
    }  # fmt: skip
    if data:
        raw["selectivity"] = {"data": str(data), "image_size": 32, "batch_size": 8, "workers": 0,
                              "images_per_shard": 11}  # fmt: skip
    return parse_config(raw)


def test_a_resnet18_sweep_with_a_module_layer(local_ray, tmp_path, image_folder_dir):
    config = small(tmp_path / "run", "resnet18", ["layer3.1.conv1", "layer1.0"], image_folder_dir)
    assert config.layers == ("layer1.0", "layer3.1.conv1")
    run_sweep(config, progress=False)
    layers = ("layer1.0", "layer3.1.conv1")
    assert unit_rows(config.out) == sorted(
        (m, layer, u) for m in ("am", "iam") for layer in layers for u in range(4)
    )
    run = repsub.open_run(config.out)
    records = {r["name"]: r for r in run.manifest["catalog"]}
    assert records["layer1.0"]["read"] == "block" and records["layer3.1.conv1"]["read"] == "module"
    assert records["layer3.1.conv1"]["depth"] > records["layer1.0"]["depth"]
    selectivity = run.selectivity.to_table()
    assert set(selectivity["n_images"].to_pylist()) == {21}
    assert sorted(set(selectivity["layer"].to_pylist())) == sorted(layers)
    assert run.manifest["model"]["preprocessing"]["resize_size"] == 256  # ResNet18_Weights.DEFAULT's


def test_a_sweep_of_a_custom_module_from_python(local_ray, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)
    )
    config = small(tmp_path / "run", module, ["1", "4"], methods=["iam"])
    assert config.to_dict()["model"]["architecture"] == "torch.nn.modules.container.Sequential"
    run_sweep(config, progress=False)
    assert unit_rows(config.out) == sorted(("iam", layer, u) for layer in ("1", "4") for u in range(4))
    stored = repsub.open_run(config.out).units.to_table().filter(pc.field("layer") == "1").sort_by("unit")
    direct = repsub.visualize(model=module, layers=["1"], method="iam", units="0-3", seed=5, steps=2, image_size=32,
                              batch_size=4, progress=False)  # fmt: skip
    np.testing.assert_allclose(
        np.array(stored["layer_activations"].to_pylist()),
        np.array(direct.sort_by("unit")["layer_activations"].to_pylist()),
        rtol=1e-4,
        atol=1e-5,
    )
    identity = RunWriter(config.out).read_manifest()["model"]
    assert identity["weights"] == "module" and identity["num_classes"] == 4
