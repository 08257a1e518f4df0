"""The shipped IAM policies (infra/iam/*.json) against a server that enforces them (infra.iam_s3_server: moto in
server mode, AWS's authorization rules): a real sweep with the worker's keys, the analyst reading the run with
pyarrow, duckdb and polars and refused a write, a key without a policy refused."""

import json
from pathlib import Path

import boto3
import duckdb
import polars as pl
import pytest
import ray
from botocore.config import Config
from botocore.exceptions import ClientError

import repsub
from infra.iam_policy import statement_applies
from infra.iam_s3_server import EnforcingS3
from repsub.analysis.summary import run_summary
from repsub.data.prepare import prepare_beton
from repsub.data.synthetic import make_image_folder
from repsub.errors import RunError
from repsub.runstore.writer import RunWriter
from repsub.sweep import run_sweep
from tests.sweep_helpers import small_sweep_config, start_local_ray, unit_rows

REPO = Path(__file__).resolve().parent.parent
BUCKET = "repsub-test"
RUN = f"s3://{BUCKET}/repsub/runs/enforced"
DATA = f"s3://{BUCKET}/repsub/data/images.beton"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}
EXPECTED = sorted((m, "fc5", u) for m in ("am", "iam") for u in range(3))


def shipped_policy(name: str) -> dict:
    return json.loads((REPO / "infra/iam" / name).read_text().replace("BUCKET", BUCKET))


def sweep_config(out: str = RUN):
    return small_sweep_config(
        out, DATA, layers=["fc5"], units="0-2", images_per_shard=6, workers={"count": 1, "cpus": 1}
    )


class Setup:
    def __init__(self, server: EnforcingS3, users: dict[str, dict[str, str]]):
        self.server, self.users = server, users

    def client(self, user: str):
        keys = self.users[user]
        return boto3.client(
            "s3", endpoint_url=self.server.endpoint, region_name="us-east-1",
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )  # fmt: skip

    def keys_under(self, prefix: str) -> list[str]:
        listing = self.client("admin").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def audit(self, user: str) -> list[dict]:
        return [r for r in self.server.audit() if r["principal"].endswith(f":user/{user}")]


def refused(call) -> bool:
    try:
        call()
    except ClientError as err:
        return err.response["Error"]["Code"] in ("AccessDenied", "403")
    return False


@pytest.fixture(scope="module")
def iam(tmp_path_factory):
    server = EnforcingS3(str(tmp_path_factory.mktemp("iam-server")))
    try:
        server.create_bucket(BUCKET)
        images = make_image_folder(tmp_path_factory.mktemp("data") / "images", num_classes=3, images_per_class=4,
                                   size=20)  # fmt: skip
        local = images.parent / "images.beton"
        prepare_beton(images, local, max_resolution=18, write_mode="raw", workers=1, progress=False)
        setup = server.client()
        for suffix in ("", ".json"):
            setup.upload_file(str(local) + suffix, BUCKET, "repsub/data/images.beton" + suffix)
        setup.put_object(Bucket=BUCKET, Key="other/secret.txt", Body=b"not repsub's")
        users = {
            "worker": server.create_user("worker", shipped_policy("worker-policy.json")),
            "analyst": server.create_user("analyst", shipped_policy("analyst-policy.json")),
            "nobody": server.create_user("nobody", None),
            "admin": server.create_user("admin", ADMIN_POLICY),
        }
        server.enforce()
        env = {**server.env(users["worker"]), "REPSUB_CACHE": str(tmp_path_factory.mktemp("cache"))}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():  # before Ray starts: its workers run with the worker's keys
                patch.setenv(key, value)
            start_local_ray(tmp_path_factory.mktemp("ray"))
            yield Setup(server, users)
            ray.shutdown()
    finally:
        server.close()


@pytest.fixture(scope="module")
def swept(iam):
    run_sweep(sweep_config(), progress=False)
    return iam


def test_the_worker_policy_runs_a_sweep_and_grants_nothing_unused(swept):
    assert unit_rows(RUN) == EXPECTED
    assert repsub.open_run(RUN).selectivity.count_rows() == 128  # fc5, from the .beton staged from S3
    worker = swept.audit("worker")
    assert worker and [r for r in worker if not r["allowed"]] == []  # no request of the sweep was refused
    operations = {r["operation"] for r in worker}
    assert {"HeadBucket", "ListObjectsV2", "HeadObject", "GetObject", "PutObject", "CreateMultipartUpload",
            "DeleteObject"} <= operations  # fmt: skip

    # Create-only writes (markers, the lock) rely on If-None-Match, which the server enforces.
    writer = RunWriter(RUN)
    assert writer.put_if_absent("probe.json", b"1") and not writer.put_if_absent("probe.json", b"2")
    writer.delete("probe.json")
    # pyarrow aborts a failed multipart upload: no failure to provoke here, so that call is made directly.
    client = swept.client("worker")
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="repsub/runs/enforced/aborted.bin")
    client.abort_multipart_upload(
        Bucket=BUCKET, Key="repsub/runs/enforced/aborted.bin", UploadId=upload["UploadId"]
    )

    # Least privilege: every action of every statement was needed by some request.
    used = [(p[0], p[1], p[2]) for r in swept.audit("worker") for p in r["permissions"]]
    for statement in shipped_policy("worker-policy.json")["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            assert any(statement_applies({**statement, "Action": action}, *use) for use in used), (
                f"{statement['Sid']}: {action} was never needed"
            )


def test_the_worker_policy_refuses_what_a_sweep_does_not_need(swept):
    client = swept.client("worker")
    assert refused(lambda: client.put_object(Bucket=BUCKET, Key="repsub/data/images.beton", Body=b"x"))
    assert refused(lambda: client.delete_object(Bucket=BUCKET, Key="repsub/data/images.beton"))
    assert refused(lambda: client.get_object(Bucket=BUCKET, Key="other/secret.txt"))
    assert refused(lambda: client.delete_bucket(Bucket=BUCKET))
    assert refused(lambda: client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(ADMIN_POLICY)))
    with pytest.raises(RunError, match="access denied"):
        run_sweep(sweep_config(f"s3://{BUCKET}/elsewhere/run"), progress=False)
    assert swept.keys_under("elsewhere/") == []


def test_the_analyst_reads_a_run_with_pyarrow_duckdb_and_polars_and_cannot_write(swept, monkeypatch):
    keys = swept.users["analyst"]
    for key, value in keys.items():
        monkeypatch.setenv(key, value)
    run = repsub.open_run(RUN)
    units = run.units.to_table(columns=["method", "layer", "unit", "rs"])
    assert sorted(zip(*(units[c].to_pylist() for c in ("method", "layer", "unit")), strict=True)) == EXPECTED
    assert [row["layer"] for row in run_summary(run)] == ["fc5"]  # what `repsub summary` shows

    import duckdb_extension_httpfs

    extension = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    con = duckdb.connect()
    con.execute(f"LOAD '{extension / 'httpfs.duckdb_extension'}'")
    con.execute(
        f"CREATE SECRET (TYPE s3, KEY_ID '{keys['AWS_ACCESS_KEY_ID']}', SECRET '{keys['AWS_SECRET_ACCESS_KEY']}', "
        f"ENDPOINT '{swept.server.endpoint.removeprefix('http://')}', URL_STYLE 'path', USE_SSL false, "
        "REGION 'us-east-1')"
    )
    by_duckdb = con.sql(
        f"SELECT sum(rs), count(*) FROM read_parquet('{RUN}/units/*/*.parquet', hive_partitioning=true)"
    ).fetchone()
    assert by_duckdb == (pytest.approx(sum(units["rs"].to_pylist())), 6)
    options = {"aws_endpoint_url": swept.server.endpoint, "aws_region": "us-east-1",
               "aws_access_key_id": keys["AWS_ACCESS_KEY_ID"],
               "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    by_polars = pl.scan_parquet(f"{RUN}/selectivity/**/*.parquet", storage_options=options).select(pl.len())
    assert by_polars.collect().item() == 128

    before = swept.keys_under("repsub/")
    with pytest.raises(RunError, match="access denied"):
        RunWriter(RUN).put_bytes("notes.txt", b"mine")
    with pytest.raises(RunError, match="access denied"):  # a writer's run lock cannot be taken
        repsub.visualize(method="am", layers=["fc5"], units="0", steps=1, out=RUN, progress=False)
    client = swept.client("analyst")
    assert refused(lambda: client.delete_object(Bucket=BUCKET, Key="repsub/runs/enforced/manifest.json"))
    assert refused(lambda: client.get_object(Bucket=BUCKET, Key="repsub/data/images.beton"))
    assert swept.keys_under("repsub/") == before
    denied = {r["operation"] for r in swept.audit("analyst") if not r["allowed"]}
    assert denied == {"PutObject", "CreateMultipartUpload", "DeleteObject", "GetObject"}
    assert all(p[0] == "s3:GetObject" and "repsub/data/" in p[1] for r in swept.audit("analyst")
               if r["operation"] == "GetObject" and not r["allowed"] for p in r["permissions"])  # fmt: skip


def test_a_key_without_a_policy_or_unknown_to_iam_is_refused(swept, monkeypatch):
    for key, value in swept.users["nobody"].items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RunError, match="access denied"):
        repsub.open_run(RUN)
    with pytest.raises(RunError, match="access denied"):
        run_sweep(sweep_config(f"{RUN}-nobody"), progress=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    with pytest.raises(RunError, match="access denied") as err:
        repsub.open_run(RUN)
    assert swept.users["nobody"]["AWS_SECRET_ACCESS_KEY"] not in str(err.value)
    assert "AKIAUNKNOWNUNKNOWN00" not in str(err.value)
    assert swept.keys_under("repsub/runs/enforced-nobody") == []
