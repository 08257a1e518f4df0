"""Extending a run: a command that writes into an existing run takes its model, weights, seed, layers and
settings from the manifest when they are not given, verifies the weights, and refuses another model in
words."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import repsub
from repsub.models import load_model
from repsub.runstore.tables import decode_png
from tests.cli_helpers import run_cli as cli

SEED = 3  # not the default 0: taking the run's seed is part of re-creating its random weights


@pytest.fixture
def run(tmp_path, image_folder_dir, capsys):
    """A run made with selectivity (shallow_cnn, random weights of seed 3, 3 classes' data, 16 px, two layers)
    and AM of units 0-1 at 2 steps."""
    out = tmp_path / "run"
    code, text = cli(
        capsys,
        "selectivity",
        "--model",
        "shallow_cnn",
        "--seed",
        SEED,
        "--data",
        image_folder_dir,
        "--image-size",
        16,
        "--layers",
        "conv2,fc5",
        "--workers",
        0,
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, text
    code, text = cli(
        capsys,
        "visualize",
        "--model",
        "shallow_cnn",
        "--seed",
        SEED,
        "--method",
        "am",
        "--units",
        "0-1",
        "--steps",
        2,
        "--rescue-rounds",  # taken by the commands that extend the run: their rows take exactly 2 steps
        0,
        "--batch-size",
        8,
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, text
    return out


def rows(out) -> list[tuple]:
    table = repsub.open_run(out).units.to_table(columns=["method", "layer", "unit", "steps", "rs", "image"])
    return sorted(
        (r["method"], r["layer"], r["unit"], r["steps"], r["rs"], decode_png(r["image"]).shape)
        for r in table.to_pylist()
    )


def test_a_method_is_added_without_model_or_weights(run, capsys):
    before = json.loads((run / "manifest.json").read_text())
    code, text = cli(capsys, "visualize", "--method", "iam", "--units", "0-1", "--out", run, "--no-progress")
    assert code == 0, text
    assert "from the run" in text and "model shallow_cnn" in text and f"seed {SEED}" in text
    assert "layers conv2,fc5" in text and "image size 16" in text and "steps 2" in text
    assert "rescue rounds 0" in text  # a setting the run has, not the default: said
    stored = rows(run)
    iam = [r for r in stored if r[0] == "iam"]  # the run's layers, its image size and steps
    assert [(r[1], r[2], r[3], r[5]) for r in iam] == [
        ("conv2", 0, 2, (16, 16, 3)),
        ("conv2", 1, 2, (16, 16, 3)),
        ("fc5", 0, 2, (16, 16, 3)),
        ("fc5", 1, 2, (16, 16, 3)),
    ]
    after = json.loads((run / "manifest.json").read_text())
    assert after["model"] == before["model"] and set(after["commands"]) == {
        "selectivity",
        "visualize/am",
        "visualize/iam",
    }
    # The same rows as a direct computation with the model given in full (the run's model, seed and settings).
    direct = repsub.visualize(
        model=load_model("shallow_cnn", "random", seed=SEED, num_classes=10),
        method="iam",
        layers=["conv2", "fc5"],
        units="0-1",
        seed=SEED,
        steps=2,
        rescue_rounds=0,
        image_size=16,
        batch_size=8,
        device="cpu",
        progress=False,
    )
    expected = sorted(
        zip(direct["layer"].to_pylist(), direct["unit"].to_pylist(), direct["rs"].to_pylist(), strict=True)
    )
    assert [(r[1], r[2], r[4]) for r in iam] == expected


def test_units_and_selectivity_layers_are_added_from_python_with_model_none(run, image_folder_dir):
    repsub.visualize(method="am", units="2", out=run, device="cpu", progress=False)
    am = [(r[1], r[2]) for r in rows(run) if r[0] == "am"]
    assert am == [("conv2", 0), ("conv2", 1), ("conv2", 2), ("fc5", 0), ("fc5", 1), ("fc5", 2)]
    table = repsub.selectivity(
        data=image_folder_dir, layers=["conv1"], out=run, workers=0, device="cpu", progress=False
    )
    assert set(table["layer"].to_pylist()) == {"conv1"}
    selectivity = repsub.open_run(run).manifest["commands"]["selectivity"]["config"]
    assert (
        selectivity["image_size"] == 16 and selectivity["seed"] == SEED
    )  # the run's, not the model's 32 or 0


def test_another_model_is_refused_in_words(run, capsys):
    code, text = cli(capsys, "visualize", "--model", "mlp", "--method", "iam", "--out", run, "--no-progress")
    assert code == 2
    assert "the run's model is shallow_cnn with weights 'random'" in text and "this command's is mlp" in text
    assert "differ in architecture" in text and "{" not in text  # words, no identity dicts
    # Weights of another seed: refused, as weights (the run's seed is 3).
    code, text = cli(capsys, "visualize", "--method", "iam", "--seed", 0, "--out", run, "--no-progress")
    assert code == 2 and "random weights of seed 0 do not give the run's weights" in text and "{" not in text
    assert {r[0] for r in rows(run)} == {"am"}  # nothing written


def test_a_weights_file_is_found_and_verified(tmp_path, image_folder_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    torch.save(load_model("shallow_cnn", "random", seed=1).module.state_dict(), tmp_path / "r" / "w.pt")
    code, text = cli(
        capsys,
        "visualize",
        "--model",
        "shallow_cnn",
        "--weights",
        "r/w.pt",
        "--method",
        "am",
        "--layers",
        "fc5",
        "--units",
        "0",
        "--steps",
        1,
        "--image-size",
        16,
        "--out",
        "r",
        "--no-progress",
    )
    assert code == 0, text
    # From another directory the recorded relative path does not lead to the file: it is found in the run.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, text = cli(
        capsys, "visualize", "--method", "iam", "--units", "0", "--out", tmp_path / "r", "--no-progress"
    )
    assert code == 0, text
    assert "weights r/w.pt" in text
    # The file changed since the run was made: refused, saying so.
    torch.save(load_model("shallow_cnn", "random", seed=2).module.state_dict(), tmp_path / "r" / "w.pt")
    code, text = cli(
        capsys, "visualize", "--method", "iam", "--units", "1", "--out", tmp_path / "r", "--no-progress"
    )
    assert code == 2 and "the file changed since the run was made" in text and "--weights" in text
    (tmp_path / "r" / "w.pt").unlink()
    code, text = cli(
        capsys, "visualize", "--method", "iam", "--units", "1", "--out", tmp_path / "r", "--no-progress"
    )
    assert code == 2 and "w.pt, which is not found from here" in text, text


def test_without_a_run_a_model_is_required(tmp_path, capsys):
    code, text = cli(capsys, "visualize", "--method", "am", "--out", tmp_path / "new", "--no-progress")
    assert code == 2 and "give a model: --model NAME" in text and "holds no run" in text
    assert not (tmp_path / "new").exists()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_a_run_of_a_python_module_asks_for_the_module(tmp_path, capsys):
    torch.manual_seed(0)
    net, out = Tiny(), tmp_path / "mine"
    repsub.visualize(
        model=net,
        layers=["relu"],
        method="am",
        units="0",
        steps=1,
        image_size=12,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        out=out,
        device="cpu",
        progress=False,
    )
    code, text = cli(capsys, "visualize", "--method", "iam", "--out", out, "--no-progress")
    assert code == 2 and "made with a model given from Python" in text and "Tiny" in text
    assert "pass the same module from Python" in text
    # Given the module again, the rest is the run's: its layers, image size, normalization.
    table = repsub.visualize(model=net, method="iam", units="0-1", out=out, device="cpu", progress=False)
    assert table["layer"].to_pylist() == ["relu", "relu"]
    assert {decode_png(r["image"]).shape for r in repsub.open_run(out).units.to_table().to_pylist()} == {
        (12, 12, 3)
    }
    assert repsub.open_run(out).manifest["model"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def test_layers_all_covers_every_layer(run):
    table = repsub.visualize(
        method="iam", layers=["all"], units="0", steps=1, out=run, device="cpu", progress=False
    )
    assert table["layer"].to_pylist() == ["conv1", "conv2", "conv3", "conv4", "fc5", "fc6"]
    assert np.all(np.isfinite(table["rs"].to_numpy()))
