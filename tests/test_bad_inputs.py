"""Every bad input a clear error: exit status 2, a message that names the value, no traceback, nothing written.
Each invalid case has valid neighbours that pass the same validation (and, on the command line, run)."""

import json

import pytest
import torch

from repsub.sweep import load_config
from repsub.sweep.config import WorkersConfig
from tests.cli_helpers import run_cli

SEL = ["selectivity", "--model", "shallow_cnn", "--data", "{data}", "--workers", "0", "--image-size", "16"]
VIS = ["visualize", "--model", "shallow_cnn", "--method", "am", "--layers", "fc6", "--units", "0", "--steps", "1",
       "--image-size", "16"]  # fmt: skip
IMP = ["importance", "--model", "shallow_cnn", "--weights", "{weights}", "--data", "{data}", "--layers", "fc6",
       "--units", "0", "--workers", "0", "--image-size", "16"]  # fmt: skip
TRAIN = ["train", "--model", "shallow_cnn", "--data", "{data}", "--epochs", "1", "--image-size", "16"]
HUGE = str(2**70)

INVALID = [
    (SEL + ["--image-size", "2"], "--image-size 2: the forward of shallow_cnn fails on a 2 px image"),
    (SEL + ["--image-size", "0"], "--image-size must be at least 1, got 0"),
    (SEL + ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (SEL + ["--workers", "-1"], "--workers must be at least 0, got -1"),
    (SEL + ["--seed", HUGE], f"--seed must be below 2**63, got {HUGE}"),
    (SEL + ["--seed", "-1"], "--seed must be at least 0, got -1"),
    (SEL + ["--weights", "{complex_weights}"], "complex-valued weights (features.0.weight"),
    (VIS + ["--lr", "nan"], "--lr must be a finite number, got nan"),
    (VIS + ["--lr", "inf"], "--lr must be a finite number, got inf"),
    (VIS + ["--lr", "0"], "--lr must be above 0.0, got 0.0"),
    (VIS + ["--steps", "0"], "--steps must be at least 1, got 0"),
    (VIS + ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (VIS + ["--image-size", "2"], "--image-size 2: the forward of shallow_cnn fails on a 2 px image"),
    (VIS + ["--image-size", "0"], "--image-size must be at least 1, got 0"),
    (VIS + ["--seed", HUGE], f"--seed must be below 2**63, got {HUGE}"),
    (IMP + ["--images", "0"], "--images must be at least 1, got 0"),
    (IMP + ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (IMP + ["--workers", "-1"], "--workers must be at least 0, got -1"),
    (IMP + ["--image-size", "2"], "--image-size 2: the forward of shallow_cnn fails on a 2 px image"),
    (TRAIN + ["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (TRAIN + ["--image-size", "2"], "--image-size 2: the forward of shallow_cnn fails on a 2 px image"),
    (TRAIN + ["--seed", HUGE], f"--seed must be below 2**63, got {HUGE}"),
]
VALID = [
    SEL + ["--image-size", "4"],
    SEL + ["--batch-size", "1", "--workers", "1", "--seed", str(2**63 - 1)],
    SEL + ["--weights", "{half_weights}"],
    VIS + ["--lr", "1e-9", "--image-size", "4", "--batch-size", "1"],
    IMP + ["--images", "3", "--batch-size", "1"],
    TRAIN + ["--image-size", "4", "--seed", "0"],
]


@pytest.fixture(scope="module")
def paths(image_folder_dir, shallow_random, tmp_path_factory):
    """What the argument lists name: data, and weights files (3 classes, as the data)."""
    where = tmp_path_factory.mktemp("inputs")
    state = shallow_random.module.state_dict()
    files = {"weights": state, "half_weights": {k: v.half() for k, v in state.items()},
             "complex_weights": {k: v.to(torch.complex64) for k, v in state.items()}}  # fmt: skip
    for name, values in files.items():
        torch.save(values, where / f"{name}.pt")
    return {"data": str(image_folder_dir), **{name: str(where / f"{name}.pt") for name in files}}


def command_line(template, paths, out):
    argv = [arg.format(**paths) for arg in template]
    return argv + ["--out", str(out)] + ([] if argv[0] == "train" else ["--no-progress"])


@pytest.mark.parametrize(
    ("template", "message"), INVALID, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in INVALID]
)
def test_an_invalid_argument_is_refused_clearly(template, message, paths, tmp_path, capsys):
    out = tmp_path / ("w.pt" if template[0] == "train" else "run")
    code, text = run_cli(capsys, *command_line(template, paths, out))
    assert code == 2 and message in text, text
    assert "Traceback" not in text and not out.exists()  # nothing written


@pytest.mark.parametrize("template", VALID, ids=[" ".join(c[:1] + c[-2:]) for c in VALID])
def test_a_valid_neighbour_runs(template, paths, tmp_path, capsys):
    out = tmp_path / ("w.pt" if template[0] == "train" else "run")
    code, text = run_cli(capsys, *command_line(template, paths, out))
    assert code == 0, text
    assert out.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("manifest.json", "[]", "manifest.json holds an array '[]', not a run manifest"),
        ("manifest.json", "null", "manifest.json holds null 'null', not a run manifest"),
        ("manifest.json", '"run"', "manifest.json holds a string '\"run\"', not a run manifest"),
        ("manifest.json", "{", "manifest.json is not valid JSON"),
        ("_lock.json", "garbage", "_lock.json is not a repsub run lock (7 bytes that are not a JSON object)"),
        ("_lock.json", "[1]", "_lock.json is not a repsub run lock"),
    ],
)
def test_a_damaged_run_file_is_refused_and_left_as_it_is(name, content, message, paths, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text(content)
    code, text = run_cli(capsys, *command_line(VIS, paths, out))
    assert code == 2 and message in text and "Traceback" not in text
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == content
    if name == "_lock.json":  # only --force-unlock removes what is not a lock
        assert run_cli(capsys, *command_line(VIS, paths, out) + ["--force-unlock"])[0] == 0


BASE_CONFIG = {"model": "shallow_cnn", "layers": ["fc6"], "units": "0", "methods": ["am"],
               "optimization": {"steps": 1, "image_size": 16}, "workers": {"count": 1}}  # fmt: skip
BAD_CONFIGS = [
    ({"units": 3.5}, "units 3.5: expected unit ranges"),
    ({"units": True}, "units True: expected unit ranges"),
    ({"units": "200-300"}, "units '200-300' selects no unit of any layer (units per layer: fc6 10)"),
    ({"units": "3-1"}, "ranges must be ascending"),
    ({"seed": 2**70}, f"seed must be below 2**63, got {2**70}"),
    ({"seed": -1}, "seed must be at least 0, got -1"),
    ({"workers": {"cpus": -1}}, "workers.cpus must be at least 0.0, got -1.0"),
    ({"workers": {"gpus": float("nan")}}, "workers.gpus must be a finite number, got nan"),
    ({"workers": {"count": 0}}, "workers.count must be at least 1, got 0"),
    ({"optimization": {"lr": float("nan")}}, "optimization: --lr must be a finite number, got nan"),
    ({"optimization": {"image_size": 2}}, "optimization.image_size 2: the forward of shallow_cnn fails"),
    ({"optimization": {"jitter": 2.0}}, "jitter must be at most 0.5, got 2.0"),
    ({"selectivity": {"data": "{data}", "workers": -1}}, "selectivity.workers must be at least 0, got -1"),
    (
        {"selectivity": {"data": "{data}", "image_size": 0}},
        "selectivity.image_size must be at least 1, got 0",
    ),
    ({"importance": {"data": "{data}", "images": 0}}, "importance.images must be at least 1, got 0"),
    ({"allow_mixed": "yes"}, "allow_mixed must be true or false, got 'yes'"),
]
GOOD_CONFIGS = [
    ({"units": 3}, "units", "3"),
    ({"units": [1, 2]}, "units", "1,2"),
    ({"units": "5-300"}, "units", "5-300"),  # fc6 has units 5-9: the rest of the range is no layer's
    ({"seed": 2**63 - 1}, "seed", 2**63 - 1),
    ({"workers": {"cpus": 0.5, "gpus": 0}}, "workers", WorkersConfig(count=1, gpus=0.0, cpus=0.5)),
    ({"allow_mixed": True}, "allow_mixed", True),
]


def write_config(tmp_path, change: dict, paths) -> str:
    raw = {**BASE_CONFIG, **change, "out": str(tmp_path / "run")}
    text = json.dumps(raw).replace("{data}", paths["data"]).replace("NaN", ".nan")  # YAML reads JSON
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_an_invalid_sweep_config_value_is_refused_clearly(change, message, paths, tmp_path, capsys):
    code, text = run_cli(capsys, "sweep", "--config", write_config(tmp_path, change, paths), "--no-progress")
    assert code == 2 and message in text, text
    assert "Traceback" not in text and not (tmp_path / "run").exists()  # refused before Ray or any write


@pytest.mark.parametrize(("change", "key", "value"), GOOD_CONFIGS, ids=[str(c[0]) for c in GOOD_CONFIGS])
def test_a_valid_sweep_config_neighbour_is_accepted(change, key, value, paths, tmp_path):
    assert getattr(load_config(write_config(tmp_path, change, paths)), key) == value
