"""Runs on S3, against a real SeaweedFS server on loopback (tests/s3_server.py)."""

import json
import threading
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import ray

import repsub
from infra.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3
from repsub.cli import main
from repsub.data.synthetic import make_image_folder
from repsub.errors import RunError
from repsub.runstore.tables import UNITS
from repsub.runstore.writer import RunWriter
from repsub.sweep import SweepError, run_sweep
from repsub.sweep.commit import LOCK, ShardLedger
from tests.run_compare import assert_same_results
from tests.sweep_helpers import (
    kill_a_driver_midway,
    shards_already_done,
    small_sweep_config,
    start_local_ray,
    unit_rows,
    wait_for_shards,
)

BUCKET = "runs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedS3()
    server.client().create_bucket(Bucket=BUCKET)
    env = {**server.env(), "REPSUB_CACHE": str(tmp_path_factory.mktemp("cache"))}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():  # before Ray starts, so its workers inherit the same environment
            patch.setenv(key, value)
        start_local_ray(tmp_path_factory.mktemp("ray"))
        yield server
        ray.shutdown()
    server.close()


def config_for(uri, data=None, **overrides):
    settings = {"seed": 1, "units": "0-5", "batch_size": 3, "selectivity_batch": 8, "images_per_shard": 10}
    return small_sweep_config(uri, data, **{**settings, **overrides})


def keys(server, prefix):
    listing = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


EXPECTED = sorted((m, layer, u) for m in ("am", "iam") for layer in ("conv2", "fc5") for u in range(6))


def test_a_sweep_to_s3_read_back_by_pyarrow_duckdb_and_polars(s3, image_folder_dir):
    uri = f"s3://{BUCKET}/readers"
    run_sweep(config_for(uri, image_folder_dir), progress=False)
    run = repsub.open_run(uri)
    assert unit_rows(uri) == EXPECTED
    units = run.units.to_table(columns=["layer", "method", "unit", "rs"]).sort_by(
        [("layer", "ascending"), ("method", "ascending"), ("unit", "ascending")]
    )
    assert run.selectivity.count_rows() == 64 + 128
    assert not [k for k in keys(s3, "readers/") if "/.tmp-" in k]  # nothing staged was left behind

    import duckdb_extension_httpfs

    extension = (
        Path(duckdb_extension_httpfs.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "httpfs.duckdb_extension"
    )
    con = duckdb.connect()
    con.execute(f"LOAD '{extension}'")
    con.execute(
        f"CREATE SECRET (TYPE s3, KEY_ID '{ACCESS_KEY}', SECRET '{SECRET_KEY}', "
        f"ENDPOINT '{s3.endpoint.removeprefix('http://')}', URL_STYLE 'path', USE_SSL false, "
        "REGION 'us-east-1')"
    )
    by_duckdb = con.sql(
        f"SELECT layer, method, unit, rs FROM read_parquet('{uri}/units/*/*.parquet', "
        "hive_partitioning=true) ORDER BY layer, method, unit"
    ).fetchall()
    assert by_duckdb == list(
        zip(*(units[c].to_pylist() for c in ("layer", "method", "unit", "rs")), strict=True)
    )

    options = {
        "aws_endpoint_url": s3.endpoint,
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
        "aws_region": "us-east-1",
    }
    by_polars = (
        pl.scan_parquet(f"{uri}/selectivity/**/*.parquet", hive_partitioning=True, storage_options=options)
        .group_by("layer")
        .agg(pl.len(), pl.col("selectivity").fill_nan(None).mean())
        .sort("layer")
        .collect()
    )
    sel = run.selectivity.to_table(columns=["layer", "selectivity"])
    assert by_polars["len"].to_list() == [64, 128]
    for layer, mean in zip(by_polars["layer"], by_polars["selectivity"], strict=True):
        values = np.array(
            [
                s
                for lay, s in zip(sel["layer"].to_pylist(), sel["selectivity"].to_pylist(), strict=True)
                if lay == layer and s is not None and s == s
            ],
            dtype=float,
        )
        assert mean == pytest.approx(values.mean())


def test_the_lock_refuses_a_second_sweep(s3):
    uri = f"s3://{BUCKET}/locked"
    writer = RunWriter(uri)
    other = {"host": "another-host", "pid": 4242, "user": "someone", "since": "2026-01-01T00:00:00+00:00"}
    assert writer.put_if_absent(LOCK, json.dumps(other).encode())
    assert not writer.put_if_absent(LOCK, b"{}")  # create-only, really
    with pytest.raises(
        RunError, match="locked by another writer: a command .host another-host.*--force-unlock"
    ):
        run_sweep(config_for(uri), progress=False)
    code = main(["visualize", "--model", "shallow_cnn", "--method", "am", "--layers", "fc6", "--units", "0",
                 "--steps", "1", "--image-size", "16", "--out", uri, "--no-progress"])  # fmt: skip
    assert code == 2  # every writer honours the lock
    assert keys(s3, "locked/") == ["locked/_lock.json"]  # refused before writing anything
    run_sweep(config_for(uri), progress=False, force_unlock=True)
    assert unit_rows(uri) == EXPECTED and writer.get_bytes(LOCK) is None


def test_resume_after_a_killed_sweep(s3, tmp_path, image_folder_dir, capsys):
    uri = f"s3://{BUCKET}/resumed"
    config_path = tmp_path / "c.yaml"
    config_path.write_text(
        f"model: shallow_cnn\nseed: 1\nout: {uri}\nlayers: [conv3]\nunits: 0-35\n"
        "optimization: {steps: 20, image_size: 24, batch_size: 3}\nsharding: {units_per_shard: 3}\n"
        "workers: {count: 1, cpus: 1}\n"
        f"selectivity: {{data: {image_folder_dir}, batch_size: 4, workers: 0, images_per_shard: 5}}\n"
    )
    config, done_before = kill_a_driver_midway(config_path)
    assert 3 <= done_before < 29
    run_sweep(config, progress=False)  # the dead driver's lock is recognized as stale (same host, no process)
    out, err = capsys.readouterr()
    # The killed driver's worker may still commit its in-flight shard before it notices; never more.
    already = shards_already_done(out)
    assert done_before <= already <= done_before + 1 and "stale lock" in err
    assert unit_rows(uri) == sorted((m, "conv3", u) for m in ("am", "iam") for u in range(36))
    whole = replace(config, out=f"s3://{BUCKET}/resumed-whole")
    run_sweep(whole, progress=False)
    assert_same_results(uri, whole.out)  # units and class means equal an uninterrupted run, bit for bit


def test_a_server_outage_fails_clearly_and_a_rerun_completes(s3):
    uri = f"s3://{BUCKET}/outage"
    config = config_for(
        uri, layers=["conv3"], units="0-17", optimization={"steps": 15, "image_size": 24, "batch_size": 3}
    )
    ledger = ShardLedger(RunWriter(uri), config.fingerprint())

    def stop_the_server_once_work_is_under_way():
        wait_for_shards(ledger, 2, timeout=60)
        s3.stop()

    stopper = threading.Thread(target=stop_the_server_once_work_is_under_way)
    stopper.start()
    try:
        with pytest.raises((SweepError, RunError)) as err:
            run_sweep(config, progress=False)
    finally:
        stopper.join()
        s3.start()
    message = str(err.value)
    assert s3.endpoint in message and "cannot be reached" in message
    assert SECRET_KEY not in message and ACCESS_KEY not in message
    run_sweep(config, progress=False)
    assert unit_rows(uri) == sorted((m, "conv3", u) for m in ("am", "iam") for u in range(18))
    whole = replace(config, out=f"s3://{BUCKET}/outage-whole")
    run_sweep(whole, progress=False)
    assert_same_results(uri, whole.out)


def test_bad_locations_are_refused_before_anything_is_written(s3, monkeypatch):
    with pytest.raises(RunError, match="the bucket does not exist"):
        run_sweep(config_for("s3://no-such-bucket/run"), progress=False)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(RunError, match="access denied") as err:
        run_sweep(config_for(f"s3://{BUCKET}/denied"), progress=False)
    assert "wrong-secret" not in str(err.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    assert keys(s3, "denied/") == []

    s3.client().put_object(Bucket=BUCKET, Key="old/manifest.json", Body=json.dumps({"schema_version": 0}))
    with pytest.raises(RunError, match="schema version 0"):
        run_sweep(config_for(f"s3://{BUCKET}/old"), progress=False)
    with pytest.raises(RunError, match="schema version 0"):
        repsub.open_run(f"s3://{BUCKET}/old")
    assert keys(s3, "old/") == ["old/manifest.json"]

    with pytest.raises(RunError, match="must not embed credentials") as err:
        RunWriter(f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/x")
    assert SECRET_KEY not in str(err.value)


def test_selectivity_from_a_beton_on_s3(s3, tmp_path):
    from repsub.data.prepare import prepare_beton
    from repsub.data.sources import open_source
    from repsub.data.staging import staging_dir
    from repsub.models import IMAGENET_MEAN, IMAGENET_STD

    images = make_image_folder(tmp_path / "images", num_classes=3, images_per_class=5, size=20)
    local = tmp_path / "images.beton"
    prepare_beton(images, local, max_resolution=18, write_mode="raw", workers=1, progress=False)
    for suffix in ("", ".json"):
        s3.client().upload_file(str(local) + suffix, BUCKET, "data/images.beton" + suffix)
    uri = f"s3://{BUCKET}/from-beton"
    config = config_for(uri, f"s3://{BUCKET}/data/images.beton", layers=["conv1"], units="0-2")
    run_sweep(config, progress=False)

    staged = open_source(f"s3://{BUCKET}/data/images.beton", 16, IMAGENET_MEAN, IMAGENET_STD)
    assert staged.describe()["staged_from"]["uri"] == f"s3://{BUCKET}/data/images.beton"
    copies = [p for p in staging_dir().iterdir() if p.suffix == ".beton"]
    assert len(copies) == 1  # fetched once, keyed by ETag, reused by every worker and the check above
    direct = repsub.selectivity(
        model=repsub.load_model("shallow_cnn", "random", seed=1),
        data=local,
        image_size=16,
        layers=["conv1"],
        batch_size=8,
        workers=0,
        progress=False,
    )
    swept = repsub.open_run(uri).selectivity.to_table().sort_by("unit")
    np.testing.assert_allclose(
        np.array(swept["class_means"].to_pylist()),
        np.array(direct.sort_by("unit")["class_means"].to_pylist()),
        rtol=1e-5,
        atol=1e-8,
    )
    assert (
        repsub.open_run(uri)
        .manifest["commands"]["sweep"]["config"]["selectivity"]["data"]
        .startswith("s3://")
    )


def test_an_incomplete_upload_is_never_a_result(s3):
    uri = f"s3://{BUCKET}/partial"
    config = config_for(uri, layers=["fc5"], units="0-2", methods=["am"])
    shard_key = "partial/units/layer=fc5/" + UNITS.block_name("am", [0, 1, 2])
    marker_key = f"partial/_sweep/{config.fingerprint()}/done/am-fc5-00000-00002.json"
    client = s3.client()
    for key in (shard_key, marker_key):  # as a writer killed mid-upload leaves them: parts, no object
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)
        client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1024
        )
    assert keys(s3, "partial/") == []
    assert ShardLedger(RunWriter(uri), config.fingerprint()).done() == set()
    run_sweep(config, progress=False)
    assert unit_rows(uri) == [("am", "fc5", 0), ("am", "fc5", 1), ("am", "fc5", 2)]


def test_credentials_in_a_location_or_endpoint_never_reach_the_server_or_the_output(s3, monkeypatch, capfd):
    from repsub.cli import main

    secret = "leaked-secret-value"
    assert main(["summary", f"s3://{BUCKET}/leak?secret_key={secret}"]) == 2
    assert main(["report", f"s3://{ACCESS_KEY}:{secret}@{BUCKET}/leak", "--out", "/nonexistent/report"]) == 2
    # A real server reachable with the credentials in its URL: still refused, before any request.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint.replace("http://", f"http://{ACCESS_KEY}:{secret}@"))
    with pytest.raises(RunError, match="AWS_ENDPOINT_URL") as err:
        run_sweep(config_for(f"s3://{BUCKET}/leak"), progress=False)
    assert secret not in str(err.value) and s3.endpoint in str(err.value)
    out, error = capfd.readouterr()
    assert secret not in out + error and error.count("must not embed credentials") == 2
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    assert keys(s3, "leak") == []


def test_a_rerun_recomputes_an_object_that_does_not_verify(s3, image_folder_dir, capsys):
    uri = f"s3://{BUCKET}/verified"
    config = config_for(uri, image_folder_dir, layers=["fc5"], units="0-5", methods=["am"])
    run_sweep(config, progress=False)
    whole = replace(config, out=f"s3://{BUCKET}/verified-whole")
    run_sweep(whole, progress=False)
    key = "verified/units/layer=fc5/" + UNITS.block_name("am", [3, 4, 5])
    client = s3.client()
    size = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    client.put_object(Bucket=BUCKET, Key=key, Body=b"x" * size)  # overwritten: the same size, other bytes
    capsys.readouterr()
    assert main(["summary", uri]) == 2 and f"{BUCKET}/{key}" in capsys.readouterr().err
    run_sweep(config, progress=False)
    out, err = capsys.readouterr()
    assert shards_already_done(out) == 3 + 2 - 1
    assert f"am-fc5-00003-00005 is computed again: {BUCKET}/{key} differs from the committed file" in err
    assert_same_results(uri, whole.out)


def test_selectivity_with_saved_activations_writes_only_under_the_run(s3, image_folder_dir):
    """No directory-marker objects above the run (the worker's IAM policy allows writes under the runs prefix
    only): S3 has no directories, and repsub creates none."""
    uri = f"s3://{BUCKET}/team/project/run"
    code = main(["selectivity", "--model", "shallow_cnn", "--data", str(image_folder_dir), "--out", uri,
                 "--layers", "conv1,fc5", "--save-activations", "fc5", "--image-size", "16", "--workers", "0",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    written = keys(s3, "team/")
    assert written and all(k.startswith("team/project/run/") for k in written), written
    assert "team/project/run/activations/layer=fc5/activations.parquet" in written
    assert "team/project/run/_lock.json" not in written and not [k for k in written if "/.tmp-" in k]
    assert repsub.open_run(uri).activations.count_rows() == 21


def test_every_storage_operation_says_an_unreachable_endpoint(s3):
    """Each way the run store touches S3 (pyarrow's filesystem and boto3's single requests alike) turns a
    refused connection into a RunError naming the endpoint, never the SDK's own exception."""
    uri = f"s3://{BUCKET}/unreachable"
    writer = RunWriter(uri)
    writer.put_if_absent("_sweep/x/done/a.json", b"{}")
    operations = {
        "get_bytes": lambda: writer.get_bytes("_sweep/x/done/a.json"),
        "put_if_absent": lambda: writer.put_if_absent("_sweep/x/done/b.json", b"{}"),
        "list_names": lambda: writer.list_names("_sweep/x/done"),
        "file_digest": lambda: writer.file_digest(writer._path("_sweep/x/done/a.json")),
        "delete": lambda: writer.delete("_sweep/x/done/a.json"),
    }
    s3.stop()
    try:
        for name, operation in operations.items():
            with pytest.raises(RunError, match="cannot be reached") as err:
                operation()
            assert s3.endpoint in str(err.value), name
    finally:
        s3.start()
    assert writer.get_bytes("_sweep/x/done/a.json") == b"{}"  # nothing was half-done meanwhile
