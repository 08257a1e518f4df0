"""infra/: the bucket set-up script against a real SeaweedFS, and the IAM policies evaluated for what repsub does."""

import fnmatch
import json
from pathlib import Path

import pytest

from infra.seaweed import SeaweedS3
from infra.setup_bucket import setup_bucket

REPO = Path(__file__).resolve().parent.parent


def test_bucket_setup_is_idempotent_against_a_real_server():
    server = SeaweedS3()
    try:
        client = server.client()
        first = setup_bucket("results", client=client)
        assert first["create"] == "done"
        assert first["default encryption"] == first["abort incomplete uploads after 1 day"] == "done"
        assert first["block public access"].startswith("unsupported")  # SeaweedFS answers NotImplemented
        second = setup_bucket("results", client=client)
        assert second["create"] == "already" and second["default encryption"] == "done"
        rules = client.get_bucket_lifecycle_configuration(Bucket="results")["Rules"]
        assert rules[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
        client.put_object(Bucket="results", Key="x", Body=b"1")
        assert client.head_object(Bucket="results", Key="x").get("ServerSideEncryption") == "AES256"
    finally:
        server.close()


def allowed(policy: dict, action: str, resource: str, prefix: str | None = None) -> bool:
    """IAM evaluation for Allow-only policies: some statement allows it (and no Deny exists)."""
    assert not [s for s in policy["Statement"] if s["Effect"] != "Allow"]
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        if not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        condition = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
        if condition is not None and (
            prefix is None or not any(fnmatch.fnmatchcase(prefix, c) for c in condition)
        ):
            continue
        return True
    return False


def load(name):
    policy = json.loads((REPO / "infra/iam" / name).read_text())
    assert policy["Version"] == "2012-10-17"
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(
            a.startswith("s3:") and "*" not in a for a in actions
        )  # nothing broader than named actions
    return policy


BUCKET = "arn:aws:s3:::BUCKET"
# What a sweep does on the results prefix: list, head/get, put (multipart included), delete, copy (= get + put).
RESULT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def test_worker_policy_is_least_privilege():
    worker = load("worker-policy.json")
    assert allowed(worker, "s3:ListBucket", BUCKET, "repsub/runs/vgg16/units/")
    assert allowed(worker, "s3:ListBucket", BUCKET, "repsub/data/imagenet_val.beton")
    assert all(allowed(worker, a, f"{BUCKET}/repsub/runs/vgg16/units/x.parquet") for a in RESULT_ACTIONS)
    assert allowed(worker, "s3:GetObject", f"{BUCKET}/repsub/data/imagenet_val.beton")
    for action in ("s3:PutObject", "s3:DeleteObject"):
        assert not allowed(worker, action, f"{BUCKET}/repsub/data/imagenet_val.beton")  # data is read-only
    assert not allowed(worker, "s3:GetObject", f"{BUCKET}/other/secret.txt")
    assert not allowed(worker, "s3:ListBucket", BUCKET, "other/")
    for action in ("s3:DeleteBucket", "s3:PutBucketPolicy", "s3:PutBucketAcl", "s3:PutObjectAcl"):
        assert not allowed(worker, action, BUCKET) and not allowed(worker, action, f"{BUCKET}/repsub/runs/x")


def test_analyst_policy_is_read_only_on_results():
    analyst = load("analyst-policy.json")
    assert allowed(analyst, "s3:GetObject", f"{BUCKET}/repsub/runs/vgg16/manifest.json")
    assert allowed(analyst, "s3:ListBucket", BUCKET, "repsub/runs/vgg16/")
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert not allowed(analyst, action, f"{BUCKET}/repsub/runs/vgg16/manifest.json")
    assert not allowed(analyst, "s3:GetObject", f"{BUCKET}/repsub/data/imagenet_val.beton")


@pytest.mark.parametrize("name", ["worker-policy.json", "analyst-policy.json"])
def test_policies_hold_no_account_secrets(name):
    text = (REPO / "infra/iam" / name).read_text()
    assert "AKIA" not in text and "aws_secret" not in text.lower()
