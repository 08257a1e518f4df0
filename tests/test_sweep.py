"""Sweeps on a real local Ray: equal to the single-process results, resumable, and robust to lost workers."""

import os
import shutil
import signal
import socket
import threading
from dataclasses import replace

import numpy as np
import psutil
import pyarrow.compute as pc
import pytest
import ray
import torch

import repsub
from repsub.cli import main
from repsub.errors import RunError
from repsub.models import load_model
from repsub.runstore.writer import RunWriter
from repsub.sweep import SweepError, run_sweep
from repsub.sweep.commit import ShardLedger
from tests.run_compare import assert_same_results
from tests.sweep_helpers import (
    kill_a_driver_midway,
    shards_already_done,
    small_sweep_config,
    start_local_ray,
    unit_rows,
    wait_for_shards,
)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    start_local_ray(tmp_path_factory.mktemp("ray"))
    yield
    ray.shutdown()


def make_config(out, data=None, **overrides):
    return small_sweep_config(out, data, **overrides)


EXPECTED_UNITS = sorted((m, layer, u) for m in ("am", "iam") for layer in ("conv2", "fc5") for u in range(8))


def test_sweep_equals_the_single_process_commands(local_ray, tmp_path, image_folder_dir):
    config = make_config(tmp_path / "sweep", image_folder_dir)
    rows = run_sweep(config, progress=False)
    assert [r["layer"] for r in rows] == ["conv2", "fc5"]
    assert unit_rows(config.out) == EXPECTED_UNITS  # every unit exactly once

    model = load_model("shallow_cnn", "random", seed=3, num_classes=10)
    single = repsub.selectivity(
        model=model,
        data=image_folder_dir,
        image_size=16,
        layers=["conv2", "fc5"],
        batch_size=7,
        workers=0,
        progress=False,
    )
    swept = repsub.open_run(config.out).selectivity.to_table()
    for layer in ("conv2", "fc5"):
        a = single.filter(pc.equal(single["layer"], layer)).sort_by("unit")
        b = swept.filter(pc.equal(swept["layer"], layer)).sort_by("unit")
        np.testing.assert_allclose(
            np.array(b["class_means"].to_pylist()),
            np.array(a["class_means"].to_pylist()),
            rtol=1e-5,
            atol=1e-8,
        )
        # Not bit-equal: the float32 forward runs in processes with other thread counts and batches, and the
        # convolution kernels round differently. The merge itself is exact (test_selectivity.py, bitwise).
        assert b["dead"].to_pylist() == a["dead"].to_pylist() and set(b["n_images"].to_pylist()) == {21}
    # Exemplars: merged from the data shards on the workers (exactness: test_exemplars_run.py); all 21 images
    # ranked (k 16 of 21), best first, and the thumbnails of every image they refer to, once.
    run = repsub.open_run(config.out)
    exemplars = run.exemplar_rows.to_table()
    assert exemplars.num_rows == (model.layer("conv2").n_units + model.layer("fc5").n_units) * 2 * 16
    top = run.exemplars("fc5", 3, side="top", images=False)
    assert top["image_index"].nunique() == 16 and list(top["activation"]) == sorted(
        top["activation"], reverse=True
    )
    referenced = sorted(set(exemplars.column("image_index").to_pylist()))
    assert run.images.to_table().sort_by("image_index").column("image_index").to_pylist() == referenced

    direct = repsub.visualize(
        model=model,
        method="iam",
        layers=["fc5"],
        units="0-7",
        seed=3,
        progress=False,
        steps=4,
        image_size=16,
        batch_size=8,
    )
    stored = (
        repsub.open_run(config.out)
        .units.to_table()
        .filter((pc.field("layer") == "fc5") & (pc.field("method") == "iam"))
        .sort_by("unit")
    )
    np.testing.assert_allclose(
        np.array(stored["layer_activations"].to_pylist()),
        np.array(direct["layer_activations"].to_pylist()),
        rtol=1e-4,
        atol=1e-5,
    )
    assert stored["seed"].to_pylist() == direct["seed"].to_pylist()
    manifest = repsub.open_run(config.out).manifest
    assert manifest["commands"]["sweep"]["config"]["fingerprint"] == config.fingerprint()


def test_rerun_computes_nothing_already_done(local_ray, tmp_path, capsys):
    config = make_config(tmp_path / "sweep")
    run_sweep(config, progress=False)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep" / "units").rglob("*.parquet")}
    run_sweep(config, progress=False)
    assert "12 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep" / "units").rglob("*.parquet")} == files
    assert unit_rows(config.out) == EXPECTED_UNITS


def test_a_deterministic_failure_names_the_shard_after_the_others_commit(
    local_ray, tmp_path, image_folder_dir
):
    data = tmp_path / "data"
    shutil.copytree(image_folder_dir, data)
    broken = sorted((data / sorted(os.listdir(data))[2]).iterdir())[1]  # image 15 of 21: data shard 15-20
    broken.write_bytes(b"not an image")
    config = make_config(tmp_path / "sweep", data, methods=["am"], layers=["conv2"])
    with pytest.raises(SweepError) as err:
        run_sweep(config, progress=False)
    message = str(err.value)
    assert "1 shard(s) failed" in message and "data-00000015-00000020: UnreadableImageError" in message
    assert broken.name in message
    done = ShardLedger(RunWriter(config.out), config.fingerprint()).done()
    assert {"am-conv2-00000-00002", "am-conv2-00003-00005", "am-conv2-00006-00007"} <= done
    assert "data-00000015-00000020" not in done and "data-00000000-00000005" in done
    manifest = RunWriter(config.out).read_manifest()  # claimed at the start, the sweep recorded as failed
    [invocation] = manifest["commands"]["sweep"]["invocations"]
    assert invocation["status"] == "failed" and "completed_at" not in manifest["commands"]["sweep"]


def test_a_killed_worker_is_retried_and_every_unit_lands_once(local_ray, tmp_path):
    config = make_config(
        tmp_path / "sweep",
        layers=["conv4"],
        units="0-23",
        optimization={"steps": 25, "image_size": 24, "batch_size": 8},
    )
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    killed = []

    def kill_a_worker_once_work_is_under_way():
        wait_for_shards(ledger, 1, timeout=60)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any("ShardWorker" in part for part in proc.info["cmdline"] or []):
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(len(ledger.done()))
                return

    killer = threading.Thread(target=kill_a_worker_once_work_is_under_way)
    killer.start()
    run_sweep(config, progress=False)
    killer.join()
    assert killed, "no worker process was found to kill"
    assert killed[0] < 16  # the kill landed before the end
    assert unit_rows(config.out) == sorted((m, "conv4", u) for m in ("am", "iam") for u in range(24))
    whole = replace(config, out=str(tmp_path / "whole"))
    run_sweep(whole, progress=False)
    assert_same_results(config.out, whole.out)  # the retried shards equal an uninterrupted run, bit for bit


def test_a_killed_driver_resumes_where_it_stopped(local_ray, tmp_path, image_folder_dir, capsys):
    config_path = tmp_path / "c.yaml"
    out = tmp_path / "sweep"
    weights = tmp_path / "three-classes.pt"  # importance needs the data's classes
    torch.save(load_model("shallow_cnn", "random", seed=3, num_classes=3).module.state_dict(), weights)
    config_path.write_text(
        f"model: shallow_cnn\nweights: {weights}\nseed: 3\nout: {out}\nlayers: [conv3]\nunits: 0-47\n"
        "optimization: {steps: 20, image_size: 24, batch_size: 4}\nsharding: {units_per_shard: 4}\n"
        "workers: {count: 1, cpus: 1}\n"
        f"selectivity: {{data: {image_folder_dir}, batch_size: 4, workers: 0, images_per_shard: 5}}\n"
        f"importance: {{data: {image_folder_dir}, images: 12, batch_size: 6, workers: 0}}\n"
    )
    config, done_before = kill_a_driver_midway(config_path)
    assert 3 <= done_before < 41  # of 5 data, 24 AM/IAM and 12 importance shards
    (out / ".tmp-0123-left-by-a-killed-writer.parquet").write_bytes(b"PAR1 half")
    run_sweep(config, progress=False)
    already = shards_already_done(capsys.readouterr().out)
    assert done_before <= already <= done_before + 1  # its in-flight shard may still have landed
    assert unit_rows(out) == sorted((m, "conv3", u) for m in ("am", "iam") for u in range(48))
    importance = repsub.open_run(out).importance.to_table(columns=["layer", "unit"])
    assert sorted(importance["unit"].to_pylist()) == list(range(48))  # every unit's importance exactly once
    assert not list(out.rglob(".tmp-*"))
    whole = replace(config, out=str(tmp_path / "whole"))
    run_sweep(whole, progress=False)
    assert_same_results(
        out, whole.out
    )  # units, class means and importance equal an uninterrupted run, bit for bit


def test_a_rerun_recomputes_the_shards_whose_files_do_not_verify(
    local_ray, tmp_path, image_folder_dir, capsys
):
    config = make_config(tmp_path / "sweep", image_folder_dir, layers=["fc5"], units="0-5")
    run_sweep(config, progress=False)
    whole = tmp_path / "whole"
    shutil.copytree(config.out, whole)
    unit_file = next((tmp_path / "sweep" / "units" / "layer=fc5").glob("iam-00003-00005-*.parquet"))
    unit_file.write_bytes(unit_file.read_bytes()[:-64])  # truncated
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    sums = tmp_path / "sweep" / ledger.partial_sums_path("data-00000010-00000015")
    sums.write_bytes(sums.read_bytes()[:100])
    capsys.readouterr()
    assert main(["summary", config.out]) == 2  # the reader names the damaged file
    assert str(unit_file) in capsys.readouterr().err
    run_sweep(config, progress=False)
    out, err = capsys.readouterr()
    assert shards_already_done(out) == 5 + 4 - 2  # data shards and unit shards, less the two damaged
    assert f"iam-fc5-00003-00005 is computed again: {unit_file} holds" in err
    assert f"data-00000010-00000015 is computed again: {sums} holds 100 bytes" in err
    assert_same_results(config.out, whole)


def test_no_other_command_writes_a_run_while_a_sweep_does(local_ray, tmp_path):
    config = make_config(tmp_path / "sweep", layers=["conv4"], units="0-23",
                         optimization={"steps": 50, "image_size": 24, "batch_size": 3})  # fmt: skip
    ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
    refused = []

    def write_into_it_once_work_is_under_way():
        wait_for_shards(ledger, 1, timeout=120)
        try:
            repsub.visualize(
                method="am", layers=["conv4"], units="0-2", steps=3, out=config.out, progress=False
            )
        except RunError as err:
            refused.append(str(err))

    writer = threading.Thread(target=write_into_it_once_work_is_under_way)
    writer.start()
    run_sweep(config, progress=False)
    writer.join()
    assert (
        refused
        and f"locked by another writer: sweep (host {socket.gethostname()}, pid {os.getpid()}" in refused[0]
    )
    steps = repsub.open_run(config.out).units.to_table(columns=["steps", "command"])
    assert set(steps["steps"].to_pylist()) == {50} and set(steps["command"].to_pylist()) == {"sweep"}


def test_sweep_importance_equals_the_single_process_command(local_ray, tmp_path, image_folder_dir):
    weights = tmp_path / "three-classes.pt"
    model = load_model("shallow_cnn", "random", seed=3, num_classes=3)
    torch.save(model.module.state_dict(), weights)
    importance = {
        "data": str(image_folder_dir),
        "images": 12,
        "image_size": 16,
        "batch_size": 5,
        "workers": 0,
    }
    config = make_config(tmp_path / "sweep", weights=str(weights), methods=["am"], importance=importance)
    run_sweep(config, progress=False)
    swept = (
        repsub.open_run(config.out)
        .importance.to_table()
        .sort_by([("layer", "ascending"), ("unit", "ascending")])
    )
    assert sorted(zip(swept["layer"].to_pylist(), swept["unit"].to_pylist(), strict=True)) == [
        (layer, u) for layer in ("conv2", "fc5") for u in range(8)
    ]  # every unit exactly once
    single = repsub.importance(
        model=model, data=image_folder_dir, layers=["conv2", "fc5"], units="0-7", images=12, image_size=16,
        batch_size=5, workers=0, progress=False, seed=3,
    ).sort_by([("layer", "ascending"), ("unit", "ascending")])  # fmt: skip
    for column in ("accuracy_drop", "n_images", "baseline_accuracy"):
        assert swept[column].to_pylist() == single[column].to_pylist()
    np.testing.assert_allclose(
        swept["loss_increase"].to_numpy(), single["loss_increase"].to_numpy(), rtol=1e-4, atol=1e-6
    )
    assert set(swept["command"].to_pylist()) == {"sweep"}
