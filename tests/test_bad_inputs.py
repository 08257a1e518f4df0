"""Every bad input a clear error: exit status 2, a message that names the value, no traceback, nothing written.
Each invalid case has valid neighbours that pass the same validation (and, on the command line, run)."""

import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from repsub.sweep import load_config
from repsub.sweep.config import WorkersConfig
from tests.cli_helpers import run_cli
from tests.run_helpers import adopt_stray_files

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
    # Resources: one batch at this size cannot fit (a lower bound of its memory against what is free).
    (SEL + ["--image-size", "100000"], "--image-size 100000 with a batch of 64: one batch needs at least"),
    (VIS + ["--image-size", "100000"], "--image-size 100000 with a batch of 64: one batch needs at least"),
    (IMP + ["--image-size", "100000"], "--image-size 100000 with a batch of 64: one batch needs at least"),
    (TRAIN + ["--image-size", "100000"], "--image-size 100000 with a batch of 64: one batch needs at least"),
    (SEL + ["--batch-size", HUGE], f"--batch-size must be below 2**63, got {HUGE}"),
    (IMP + ["--images", str(2**64)], f"--images must be below 2**63, got {2**64}"),
    # Selections that used to mean something else than written.
    (VIS + ["--units", "1-"], "--units '1-': expected ranges like 0-15 or 3,7,10-12"),
    (VIS + ["--units", "+1"], "--units '+1': expected ranges"),
    (VIS + ["--layers", ""], "--layers '' names no layer"),
    (SEL + ["--layers", ","], "--layers ',' names no layer"),
    (IMP + ["--layers", " "], "--layers ' ' names no layer"),
    # Devices this machine does not have.
    (SEL + ["--device", "bogus"], "--device 'bogus' is not a device; available here: cpu"),
    (VIS + ["--device", "cuda:9"], "--device 'cuda:9': this machine has no such GPU; available here: cpu"),
    # Weights files that are no state_dict.
    (SEL + ["--weights", "{empty_weights}"], "the file is empty (0 bytes)"),
    (SEL + ["--weights", "{folder}"], "is a directory, not a state_dict file"),
    (SEL + ["--weights", "{code_weights}"], "not a plain state_dict, refused for safety"),
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
    """What the argument lists name: data, weights files (3 classes, as the data) and bad ones: empty, one that
    would run code when unpickled (print), a folder, a file and a symlink loop where an output goes."""
    where = tmp_path_factory.mktemp("inputs")
    state = shallow_random.module.state_dict()
    files = {"weights": state, "half_weights": {k: v.half() for k, v in state.items()},
             "complex_weights": {k: v.to(torch.complex64) for k, v in state.items()},
             "code_weights": {**state, "extra": RunsCode()}}  # fmt: skip
    for name, values in files.items():
        torch.save(values, where / f"{name}.pt")
    (where / "empty_weights.pt").write_bytes(b"")
    (where / "a_file").write_text("not a directory")
    (where / "loop").symlink_to(where / "loop")
    return {"data": str(image_folder_dir), **{name: str(where / f"{name}.pt") for name in files},
            "empty_weights": str(where / "empty_weights.pt"), "folder": str(where), "a_file": str(where / "a_file"),
            "loop": str(where / "loop")}  # fmt: skip


class RunsCode:
    """Unpickled, it would call print: what a malicious weights file does with a worse function."""

    def __reduce__(self):
        return (print, ("this ran",))


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
    assert "weights_only=False" not in text  # torch's advice to run a file's code is never passed on


@pytest.mark.parametrize("template", VALID, ids=[" ".join(c[:1] + c[-2:]) for c in VALID])
def test_a_valid_neighbour_runs(template, paths, tmp_path, capsys):
    out = tmp_path / ("w.pt" if template[0] == "train" else "run")
    code, text = run_cli(capsys, *command_line(template, paths, out))
    assert code == 0, text
    assert out.exists()


# Output locations that cannot hold a run: a file, a path through a file, a symlink loop, a pseudo file
# system. (Tests run as root, who may write in any read-only directory: /proc stands for one.)
BAD_OUTS = [
    ("{a_file}", "is a file, not a directory"),
    ("{a_file}/run", "a file stands where the path needs a directory"),
    ("{loop}", "a symlink loop"),
    ("{loop}/run", "a symlink loop"),
    ("/proc/repsub-run", "cannot write in /proc"),
]
BAD_TRAIN_OUTS = [
    ("{folder}", "is a directory: give the path of a file to write"),
    ("{a_file}/w.pt", "is a file, not a directory"),
    ("/proc/w.pt", "cannot write in /proc"),
]


@pytest.mark.parametrize(
    ("template", "out", "message"),
    [(t, out, m) for t in (SEL, VIS, IMP) for out, m in BAD_OUTS]
    + [(TRAIN, o, m) for o, m in BAD_TRAIN_OUTS],
    ids=[f"{t[0]} {o}" for t in (SEL, VIS, IMP) for o, _ in BAD_OUTS]
    + [f"train {o}" for o, _ in BAD_TRAIN_OUTS],
)
def test_an_output_location_that_cannot_be_written_is_refused_first(template, out, message, paths, capsys):
    out = out.format(**paths)
    before = sorted(p.name for p in Path(paths["folder"]).iterdir())
    code, text = run_cli(capsys, *command_line(template, paths, out))
    assert code == 2 and message in text and repr(out) in text, text
    assert "Traceback" not in text
    assert sorted(p.name for p in Path(paths["folder"]).iterdir()) == before  # nothing made, nothing left
    assert Path(paths["a_file"]).read_text() == "not a directory"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("manifest.json", "[]", "manifest.json holds an array '[]', not a run manifest"),
        ("manifest.json", "null", "manifest.json holds null 'null', not a run manifest"),
        ("manifest.json", '"run"', "manifest.json holds a string '\"run\"', not a run manifest"),
        ("manifest.json", "{", "manifest.json is not valid JSON"),
        ("_lock.json", "garbage", "_lock.json is not a repsub run lock (7 bytes that are not a JSON object)"),
        ("_lock.json", "[1]", "_lock.json is not a repsub run lock"),
        (
            "manifest.json",
            '{"schema_version": "2"}',
            "field 'schema_version' holds a string '2', not a number",
        ),
        (
            "manifest.json",
            '{"schema_version": 2, "catalog": "x"}',
            "field 'catalog' holds a string 'x', not an array",
        ),
        (
            "manifest.json",
            '{"schema_version": 2, "commands": []}',
            "field 'commands' holds an array [], not an object",
        ),
        (
            "manifest.json",
            '{"schema_version": 2, "model": "vgg"}',
            "field 'model' holds a string 'vgg', not an object",
        ),
        (
            "manifest.json",
            '{"schema_version": 2, "commands": {"visualize/am": 1}}',
            "field 'commands.visualize/am' holds a number 1, not an object",
        ),
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
    else:  # the readers refuse it alike, named, and write nothing
        for argv in (["summary", out], ["report", out, "--out", out.parent / "report"]):
            code, text = run_cli(capsys, *argv)
            assert code == 2 and message in text and "Traceback" not in text, text
        assert not (out.parent / "report").exists()


@pytest.fixture(scope="module")
def small_run(paths, tmp_path_factory):
    """A run of 4 AM units of fc6 (one optimization step)."""
    out = tmp_path_factory.mktemp("small") / "run"
    argv = command_line(VIS, paths, out)
    argv[argv.index("--units") + 1] = "0-3"
    assert main_status(argv) == 0
    return out


def main_status(argv) -> int:
    from repsub.cli import main

    return main([str(a) for a in argv])


def test_a_foreign_parquet_file_in_a_table_is_named(small_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    foreign = run / "units" / "layer=fc6" / "notes.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    adopt_stray_files(run)  # copied in by hand: part of the run once a write session adopts it
    for argv in (["summary", run], ["report", run, "--out", tmp_path / "report"]):
        code, text = run_cli(capsys, *argv)
        assert code == 2 and f"{foreign} is not a file of the units table" in text, text
        assert "Traceback" not in text
    assert not (tmp_path / "report").exists()


def test_report_resamples_below_one_get_one_message(small_run, tmp_path, capsys):
    texts = [
        run_cli(capsys, "report", small_run, "--out", tmp_path / "r", "--resamples", n) for n in ("0", "-5")
    ]
    assert texts == [
        (2, f"repsub report: error: --resamples must be at least 1, got {n}\n") for n in ("0", "-5")
    ]
    assert not (tmp_path / "r").exists()


def test_report_removes_staging_folders_of_killed_reports(small_run, tmp_path, capsys):
    out = tmp_path / "report"
    killed = out / ".tmp-report-999999999-abc"  # no such pid runs: its report was killed
    (killed / "figures").mkdir(parents=True)
    assert run_cli(capsys, "report", small_run, "--out", out, "--resamples", "10")[0] == 0
    assert not killed.exists() and not list(out.glob(".tmp-report-*"))
    assert (out / "report.html").exists()


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
    ({"workers": {"count": 2**64}}, f"workers.count must be below 2**63, got {2**64}"),
    ({"importance": {"data": "{data}", "images": 2**64}}, "importance.images must be below 2**63"),
    ({"units": "1-"}, "units '1-': expected ranges like 0-15 or 3,7,10-12"),
    ({"units": [1, True]}, "units [1, True]: expected unit ranges"),
    ({"layers": ""}, "layers '' names no layer"),
    ({"layers": []}, "layers [] names no layer"),
    ({"units": "9" * 100_000}, "units '99999999"),  # named, cut short (below)
    ({"units": "x" * 100_000}, "units 'xxxxxxxx"),
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


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS, ids=[str(c[0])[:60] for c in BAD_CONFIGS])
def test_an_invalid_sweep_config_value_is_refused_clearly(change, message, paths, tmp_path, capsys):
    code, text = run_cli(capsys, "sweep", "--config", write_config(tmp_path, change, paths), "--no-progress")
    assert code == 2 and message in text, text
    assert "Traceback" not in text and not (tmp_path / "run").exists()  # refused before Ray or any write
    assert len(text) < 600  # an echoed value is cut short


BILLION_LAUGHS = """model: shallow_cnn
out: {out}
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
units: [*d, *d, *d, *d, *d, *d, *d, *d, *d]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, "YAML anchor &a at line 3: anchors and aliases are refused in a sweep config"),
        ("model: shallow_cnn\nout: {out}\nunits: *nowhere\n", "YAML alias *nowhere at line 3"),
    ],
)
def test_yaml_anchors_and_aliases_are_refused(text, message, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(text.format(out=tmp_path / "run"))
    code, output = run_cli(capsys, "sweep", "--config", config, "--no-progress")
    assert code == 2 and message in output and "Traceback" not in output, output
    assert len(output) < 300 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "http://127.0.0.1:8265",
            "Ray's driver cannot use http:// addresses; give auto, local, ray://HOST:PORT",
        ),
        ("ray://", "expected auto, local, ray://HOST:PORT"),
        ("ray://127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1 (Connection refused, within 5 s)"),
        ("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
    ],
)
def test_a_sweep_address_ray_cannot_use_is_refused_at_once(address, message, paths, tmp_path, capsys):
    config = write_config(tmp_path, {}, paths)
    started = time.monotonic()
    code, text = run_cli(capsys, "sweep", "--config", config, "--address", address, "--no-progress")
    assert code == 2 and message in text and "Traceback" not in text, text
    assert time.monotonic() - started < 20 and not (tmp_path / "run").exists()  # no 30 s wait, no lock


@pytest.mark.parametrize(("change", "key", "value"), GOOD_CONFIGS, ids=[str(c[0]) for c in GOOD_CONFIGS])
def test_a_valid_sweep_config_neighbour_is_accepted(change, key, value, paths, tmp_path):
    assert getattr(load_config(write_config(tmp_path, change, paths)), key) == value
