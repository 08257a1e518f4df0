"""Runs that stay whole: one writer at a time (real processes), the run claimed before any row, leftovers of a
killed writer removed, shard markers that verify their files, provenance of every row, no mixing of meanings,
and a full disk (a real one: a 1 MiB tmpfs) said in words."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import repsub
from repsub.errors import RunError
from repsub.runstore.provenance import row_settings
from repsub.runstore.writer import RunWriter
from repsub.sweep import run_sweep
from repsub.sweep.commit import ShardLedger
from repsub.sweep.plan import plan_data_shards, plan_unit_shards
from repsub.sweep.work import ShardRunner
from tests.cli_helpers import run_cli as cli
from tests.run_helpers import record_command
from tests.sweep_helpers import small_sweep_config

SMALL = ["--image-size", "16", "--no-progress"]


def files(root: Path) -> dict[str, bytes]:
    """Every file under a run with its content: what a refused command must leave unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def start(*argv) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "repsub.cli", *map(str, argv)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for(condition, process, timeout=180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the writer ended before the test could observe it"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def kill(process) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_running_writer_holds_the_run_and_a_killed_one_keeps_its_claim(tmp_path, capsys):
    out = tmp_path / "run"
    writer = start("visualize", "--model", "shallow_cnn", "--method", "am", "--layers", "fc6", "--units", "0",
                   "--steps", "100000000", "--out", out, *SMALL)  # fmt: skip
    try:
        wait_for(lambda: (out / "_lock.json").is_file() and (out / "manifest.json").is_file(), writer)
        before = files(out)
        code, text = cli(capsys, "visualize", "--model", "shallow_cnn", "--method", "iam", "--layers", "fc6",
                         "--units", "1", "--steps", "1", "--out", out, *SMALL)  # fmt: skip
        assert code == 2 and "locked by another writer: visualize/am" in text and f"pid {writer.pid}" in text
        assert "--force-unlock" in text and files(out) == before  # refused: nothing written
        config = small_sweep_config(out, seed=0, units="0", layers=["fc6"])
        with pytest.raises(RunError, match=f"locked by another writer: visualize/am.*pid {writer.pid}"):
            run_sweep(config, progress=False)  # refused before Ray or any work
        assert files(out) == before
    finally:
        kill(writer)
    # Killed before writing a row, yet the run is claimed: another model is not accepted into it...
    code, text = cli(capsys, "visualize", "--model", "mlp", "--method", "am", "--layers", "fc5", "--units", "0",
                     "--steps", "1", "--out", out, *SMALL)  # fmt: skip
    assert code == 2 and "another model or weights" in text
    # ...and its lock, whose process is gone, is replaced by the next writer of this host.
    code, text = cli(capsys, "visualize", "--model", "shallow_cnn", "--method", "am", "--layers", "fc6",
                     "--units", "0-1", "--steps", "2", "--out", out, *SMALL)  # fmt: skip
    assert code == 0 and "removing the stale lock of visualize/am" in text
    assert not (out / "_lock.json").exists()
    assert repsub.open_run(out).units.to_table()["command"].to_pylist() == ["visualize/am"] * 2


def test_a_lock_from_another_host_needs_force_unlock(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = {"command": "sweep", "host": "elsewhere", "pid": 1, "user": "u", "since": "t", "token": "x"}
    (out / "_lock.json").write_text(json.dumps(holder))
    args = ["visualize", "--model", "shallow_cnn", "--method", "am", "--layers", "fc6", "--units", "0",
            "--steps", "1", "--out", out, *SMALL]  # fmt: skip
    code, text = cli(capsys, *args)
    assert code == 2 and "sweep (host elsewhere, pid 1" in text
    assert files(out) == {"_lock.json": json.dumps(holder).encode()}  # refused: nothing written
    code, text = cli(capsys, *args, "--force-unlock")
    assert code == 0 and not (out / "_lock.json").exists() and (out / "manifest.json").is_file()


def test_leftovers_of_a_killed_selectivity_pass_are_removed_by_the_next_writer(
    tmp_path, image_folder_dir, capsys
):
    data = tmp_path / "data"
    shutil.copytree(image_folder_dir, data)
    os.mkfifo(data / "class_02" / "zz_never_written.png")  # the pass blocks reading it, its files staged
    out = tmp_path / "run"
    writer = start("selectivity", "--model", "shallow_cnn", "--data", data, "--out", out, "--layers", "conv1,fc5",
                   "--save-activations", "fc5", "--workers", "0", "--batch-size", "4", *SMALL)  # fmt: skip
    staged = lambda: list(out.rglob(".tmp-*"))  # noqa: E731
    try:
        wait_for(lambda: staged(), writer)
    finally:
        kill(writer)
    assert staged()  # what the killed pass left
    (out / "report" / ".tmp-report-x").mkdir(parents=True)  # a report at work: a directory, not a leftover
    code, text = cli(capsys, "visualize", "--model", "shallow_cnn", "--method", "am", "--layers", "fc6",
                     "--units", "0", "--steps", "1", "--out", out, *SMALL)  # fmt: skip
    assert code == 0 and "removed 1 temporary file(s)" in text
    assert staged() == [out / "report" / ".tmp-report-x"]
    assert not (out / "activations" / "layer=fc5" / "activations.parquet").exists()


def test_a_command_that_fails_midway_leaves_nothing_in_a_new_run(tmp_path, image_folder_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(image_folder_dir, data)
    (data / "class_02" / "zz_broken.png").write_bytes(b"not an image")  # the last batch fails
    out = tmp_path / "run"
    code, text = cli(capsys, "selectivity", "--model", "shallow_cnn", "--data", data, "--out", out,
                     "--save-activations", "fc5", "--layers", "fc5", "--workers", "0", *SMALL)  # fmt: skip
    assert code == 2 and "zz_broken.png" in text
    assert not out.exists()  # no claim, lock, staged file or directory of the failed command


@pytest.mark.parametrize("workers", [0, 1])
def test_an_unreadable_image_reads_the_same_with_or_without_loader_workers(
    tmp_path, image_folder_dir, capsys, workers
):
    data = tmp_path / "data"
    shutil.copytree(image_folder_dir, data)
    bad = data / "class_01" / "broken.png"
    bad.write_bytes(b"not an image")
    code, text = cli(capsys, "selectivity", "--model", "shallow_cnn", "--data", data, "--out", tmp_path / "r",
                     "--workers", workers, *SMALL)  # fmt: skip
    error = text.strip().splitlines()[-1]
    assert code == 2 and error.startswith(
        f"repsub selectivity: error: unreadable image {bad}: cannot identify"
    )
    assert "Traceback" not in text and not (tmp_path / "r").exists()


def test_selectivity_of_other_data_is_not_mixed_into_the_table(tmp_path, image_folder_dir, capsys):
    other = tmp_path / "other"
    shutil.copytree(
        image_folder_dir, other, ignore=shutil.ignore_patterns("class_02")
    )  # 2 classes, 14 images
    out = tmp_path / "run"
    common = ["selectivity", "--model", "shallow_cnn", "--out", out, "--workers", "0", *SMALL]
    assert cli(capsys, *common, "--data", image_folder_dir, "--layers", "conv1")[0] == 0
    before = files(out)
    code, text = cli(capsys, *common, "--data", other, "--layers", "conv2")
    assert code == 2 and "selectivity rows of conv1 were made by selectivity with data" in text
    assert "(21 images, 3 classes)" in text and "(14 images, 2 classes)" in text and "--allow-mixed" in text
    assert files(out) == before
    code, text = cli(capsys, *common, "--data", image_folder_dir, "--layers", "conv2", "--image-size", "24")
    assert code == 2 and "image_size 16; this command's: image_size 24" in text and files(out) == before
    # Every layer again with the other data: nothing of the old meaning stays, nothing is mixed.
    assert cli(capsys, *common, "--data", other, "--layers", "conv1,conv2")[0] == 0
    # Asked for: mixed, and recorded.
    code, text = cli(capsys, *common, "--data", image_folder_dir, "--layers", "fc5", "--allow-mixed")
    assert code == 0 and "mixing allowed" in text
    manifest = repsub.open_run(out).manifest
    invocations = manifest["commands"]["selectivity"]["invocations"]
    assert [inv["config"]["layers"] for inv in invocations] == [
        ["conv1", "conv2"],
        ["fc5"],
    ]  # the first: replaced
    assert "conv1, conv2 were made by selectivity" in invocations[1]["allowed_mixed"][0]
    # Every row resolves to the settings that made it.
    rows = (
        repsub.open_run(out)
        .selectivity.to_table(columns=["layer", "unit", "command", "n_images"])
        .to_pylist()
    )
    for row in rows:
        config = row_settings(manifest, "selectivity", row["layer"], row["unit"], row["command"])
        assert config["n_images"] == row["n_images"] == (21 if row["layer"] == "fc5" else 14)
        assert config["data"]["path"] == str(image_folder_dir if row["layer"] == "fc5" else other)


def test_units_of_a_method_at_another_image_size_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    common = [
        "visualize",
        "--model",
        "shallow_cnn",
        "--out",
        out,
        "--layers",
        "fc6",
        "--steps",
        "1",
        "--no-progress",
    ]
    assert cli(capsys, *common, "--method", "am", "--units", "0-3", "--image-size", "16")[0] == 0
    before = files(out)
    code, text = cli(capsys, *common, "--method", "am", "--units", "2-5", "--image-size", "24")
    assert code == 2 and "am rows of the units table of fc6 (units 0-1) were made by visualize/am" in text
    assert "image_size 16; this command's: image_size 24" in text and files(out) == before
    assert (
        cli(capsys, *common, "--method", "iam", "--units", "0-3", "--image-size", "24")[0] == 0
    )  # another method
    assert (
        cli(capsys, *common, "--method", "am", "--units", "0-3", "--steps", "2", "--image-size", "16")[0] == 0
    )
    manifest = repsub.open_run(out).manifest
    table = (
        repsub.open_run(out)
        .units.to_table(columns=["layer", "method", "unit", "command", "steps"])
        .to_pylist()
    )
    for row in table:  # steps differ between invocations (allowed: each row records them), and resolve
        config = row_settings(manifest, "units", row["layer"], row["unit"], row["command"], row["method"])
        steps, rounds = config["settings"]["steps"], config["settings"]["rescue_rounds"]
        # The invocation's steps, or a multiple of them where the target took rescue rounds
        assert row["steps"] % steps == 0 and steps <= row["steps"] <= steps * (1 + rounds)
        assert config["method"] == row["method"]
    invoked = {row_settings(manifest, "units", r["layer"], r["unit"], r["command"], r["method"])["settings"]["steps"]
               for r in table}  # fmt: skip
    assert invoked == {1, 2}  # rows of both invocations (iam 1 step, am 2)


def test_markers_verify_their_files_and_readers_name_a_damaged_one(tmp_path, image_folder_dir, capsys):
    config = small_sweep_config(
        tmp_path / "run", image_folder_dir, layers=["fc5"], units="0-5", methods=["am"]
    )
    runner = ShardRunner(config)
    shards = plan_unit_shards(config) + plan_data_shards(21, config.selectivity.images_per_shard)
    for shard in shards:  # the Ray actors' code, in this process
        getattr(runner, "run_data_shard" if shard.id.startswith("data") else "run_unit_shard")(shard)
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    assert ledger.verified_done() == {s.id for s in shards}
    unit_file = next((tmp_path / "run" / "units" / "layer=fc5").glob("am-00000-00002-*.parquet"))
    unit_file.write_bytes(unit_file.read_bytes()[:-100])  # truncated
    sums = tmp_path / "run" / ledger.partial_sums_path("data-00000005-00000010")
    committed = sums.read_bytes()
    sums.write_bytes(committed[: len(committed) // 2])
    with pytest.raises(RunError, match=f"cannot read {sums}"):
        ledger.load_partial_sums("data-00000005-00000010")
    damaged = bytearray(committed)
    damaged[len(damaged) // 2] ^= 0xFF  # the same size, other content
    sums.write_bytes(bytes(damaged))
    assert ledger.verified_done() == {s.id for s in shards} - {"am-fc5-00000-00002", "data-00000005-00000010"}
    notes = capsys.readouterr().err
    assert f"{unit_file} holds" in notes and f"{sums} differs from the committed file" in notes
    assert ledger.done() == ledger.verified_done()  # the stale markers are gone: the shards are pending
    # Readers name the file they cannot read.
    record_command(RunWriter(config.out), "sweep", runner.model.identity(), {})
    for argv in (["summary", config.out],
                 ["visualize", "--model", "shallow_cnn", "--seed", "3", "--method", "am", "--layers", "fc5",
                  "--units", "1", "--steps", "1", "--out", config.out, *SMALL]):  # fmt: skip
        code, text = cli(capsys, *argv)
        assert code == 2 and str(unit_file) in text and "Traceback" not in text


def test_a_version_1_units_file_reads_with_a_null_command(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(capsys, "visualize", "--model", "shallow_cnn", "--out", out, "--layers", "fc6", "--units", "0-1",
               "--method", "am", "--steps", "1", *SMALL)[0] == 0  # fmt: skip
    path = next(out.rglob("am-*.parquet"))
    pq.write_table(pq.read_table(path).drop_columns(["command"]), path)
    assert repsub.open_run(out).units.to_table()["command"].to_pylist() == [None, None]


def test_a_full_disk_is_said_and_leaves_nothing(tmp_path, capsys):
    """A real full disk: a 1 MiB tmpfs (needs root, as in the project's containers), almost filled."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mount / "filler").write_bytes(b"x" * (1024 * 1024 - 48 * 1024))
        out = mount / "run"
        code, text = cli(
            capsys,
            "visualize",
            "--model",
            "shallow_cnn",
            "--method",
            "am",
            "--layers",
            "fc5",
            "--units",
            "0-63",
            "--steps",
            "1",
            "--image-size",
            "32",
            "--out",
            out,
            "--no-progress",
        )
        assert code == 2 and f"{out}: the disk is full (no space left on device)" in text
        assert "Traceback" not in text and not out.exists()  # its claim, lock and staged file removed
        assert os.listdir(mount) == ["filler"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_half_and_double_weights_load_as_float32(tmp_path, shallow_random, capsys, dtype):
    state = shallow_random.module.state_dict()
    path = tmp_path / "w.pt"
    torch.save({k: v.to(dtype) for k, v in state.items()}, path)
    loaded = repsub.load_model("shallow_cnn", str(path))
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    for key, value in loaded.module.state_dict().items():  # float16 -> float32 is exact, float64 rounds back
        assert torch.equal(value, state[key].to(dtype).float())
    name = str(dtype).removeprefix("torch.")
    assert f"{path} holds {name} weights; using them as float32" in capsys.readouterr().err
