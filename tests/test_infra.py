"""infra/: the bucket set-up script against a real SeaweedFS; the IAM policy evaluator and the S3-request-to-IAM-action
table the enforcing server (tests/test_iam_enforced.py) decides with; the shipped policies' text."""

import json
from pathlib import Path

import pytest

from infra.iam_policy import UnsupportedPolicy, allowed, decide
from infra.s3_permissions import S3Request, required
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


def load(name):
    policy = json.loads((REPO / "infra/iam" / name).read_text())
    assert policy["Version"] == "2012-10-17"
    for statement in policy["Statement"]:
        assert (
            statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        )
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(
            a.startswith("s3:") and "*" not in a for a in actions
        )  # nothing broader than named actions
    return [policy]


BUCKET = "arn:aws:s3:::BUCKET"
# What a sweep does on the results prefix (the enforcing-server test, tests/test_iam_enforced.py, derives it
# from the real requests; this is the fast check of the same policy text).
RESULT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def test_worker_policy_is_least_privilege():
    worker = load("worker-policy.json")
    assert allowed(worker, "s3:ListBucket", BUCKET)  # HeadBucket: no s3:prefix in its context
    assert allowed(worker, "s3:ListBucket", BUCKET, {"s3:prefix": "repsub/runs/vgg16/units/"})
    assert all(allowed(worker, a, f"{BUCKET}/repsub/runs/vgg16/units/x.parquet") for a in RESULT_ACTIONS)
    assert allowed(worker, "s3:GetObject", f"{BUCKET}/repsub/data/imagenet_val.beton")
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert not allowed(worker, action, f"{BUCKET}/repsub/data/imagenet_val.beton")  # data is read-only
    assert not allowed(worker, "s3:GetObject", f"{BUCKET}/other/secret.txt")
    assert not allowed(worker, "s3:ListBucket", "arn:aws:s3:::another-bucket")
    for action in ("s3:DeleteBucket", "s3:PutBucketPolicy", "s3:PutBucketAcl", "s3:PutObjectAcl",
                   "s3:GetBucketLocation", "s3:ListMultipartUploadParts", "s3:CreateBucket"):  # fmt: skip
        assert not allowed(worker, action, BUCKET) and not allowed(worker, action, f"{BUCKET}/repsub/runs/x")


def test_analyst_policy_is_read_only_on_results():
    analyst = load("analyst-policy.json")
    assert allowed(analyst, "s3:GetObject", f"{BUCKET}/repsub/runs/vgg16/manifest.json")
    assert allowed(analyst, "s3:ListBucket", BUCKET, {"s3:prefix": "repsub/runs/vgg16/"})
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert not allowed(analyst, action, f"{BUCKET}/repsub/runs/vgg16/manifest.json")
    assert not allowed(analyst, "s3:GetObject", f"{BUCKET}/repsub/data/imagenet_val.beton")


@pytest.mark.parametrize("name", ["worker-policy.json", "analyst-policy.json"])
def test_policies_hold_no_account_secrets(name):
    text = (REPO / "infra/iam" / name).read_text()
    assert "AKIA" not in text and "aws_secret" not in text.lower()


LIST_UNDER_RUNS = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
     "Condition": {"StringLike": {"s3:prefix": ["runs/*"]}}},
    {"Effect": "Allow", "NotAction": ["s3:Delete*", "s3:List*"], "Resource": "arn:aws:s3:::b/runs/*"},
    {"Effect": "Deny", "Action": "s3:*", "Resource": "arn:aws:s3:::b/runs/locked?"},
]}  # fmt: skip


@pytest.mark.parametrize(
    ("action", "resource", "context", "expected"),
    [
        ("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "runs/a/"}, "allow"),
        ("S3:LISTBUCKET", "arn:aws:s3:::b", {"s3:prefix": "runs/a/"}, "allow"),  # actions ignore case
        ("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "other/"}, "implicit deny"),
        ("s3:ListBucket", "arn:aws:s3:::b", {}, "implicit deny"),  # a missing key fails the condition
        ("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ""}, "implicit deny"),
        ("s3:GetObject", "arn:aws:s3:::b/runs/a/x", {}, "allow"),  # NotAction: everything but Delete*, List*
        ("s3:DeleteObject", "arn:aws:s3:::b/runs/a/x", {}, "implicit deny"),
        ("s3:GetObject", "arn:aws:s3:::b/RUNS/a", {}, "implicit deny"),  # resources are case-sensitive
        ("s3:GetObject", "arn:aws:s3:::b/runs/locked1", {}, "explicit deny"),  # Deny wins over Allow
        ("s3:GetObject", "arn:aws:s3:::b/runs/locked12", {}, "allow"),  # '?' is exactly one character
    ],
)
def test_policy_evaluation_follows_aws_rules(action, resource, context, expected):
    assert decide([LIST_UNDER_RUNS], action, resource, context) == expected


def test_policy_evaluation_refuses_what_it_does_not_implement():
    if_exists = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket",
                 "Resource": "*", "Condition": {"StringLikeIfExists": {"s3:prefix": "runs/*"}}}]}  # fmt: skip
    assert decide([if_exists], "s3:ListBucket", "arn:aws:s3:::b", {}) == "allow"
    assert decide([if_exists], "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "x/"}) == "implicit deny"
    numeric = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket",
               "Resource": "*", "Condition": {"NumericLessThan": {"s3:max-keys": "10"}}}]}  # fmt: skip
    with pytest.raises(UnsupportedPolicy, match="NumericLessThan"):
        decide([numeric], "s3:ListBucket", "arn:aws:s3:::b", {"s3:max-keys": "5"})


def request(method, bucket=None, key=None, query=None, headers=None, body=b""):
    return S3Request(method, bucket, key, query or {}, headers or {}, body)


@pytest.mark.parametrize(
    ("s3_request", "operation", "permissions"),
    [
        (request("HEAD", "b"), "HeadBucket", [("s3:ListBucket", "arn:aws:s3:::b", {})]),
        (request("GET", "b", query={"list-type": "2", "prefix": "runs/x/", "delimiter": "/"}), "ListObjectsV2",
         [("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "runs/x/", "s3:delimiter": "/"})]),
        (request("GET", "b"), "ListObjects", [("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": ""})]),
        (request("HEAD", "b", "runs/x"), "HeadObject", [("s3:GetObject", "arn:aws:s3:::b/runs/x", {})]),
        (request("PUT", "b", "k", headers={"if-none-match": "*"}), "PutObject",
         [("s3:PutObject", "arn:aws:s3:::b/k", {})]),
        (request("POST", "b", "k", query={"uploads": ""}), "CreateMultipartUpload",
         [("s3:PutObject", "arn:aws:s3:::b/k", {})]),
        (request("PUT", "b", "k", query={"partNumber": "1", "uploadId": "u"}), "UploadPart",
         [("s3:PutObject", "arn:aws:s3:::b/k", {})]),
        (request("DELETE", "b", "k", query={"uploadId": "u"}), "AbortMultipartUpload",
         [("s3:AbortMultipartUpload", "arn:aws:s3:::b/k", {})]),
        (request("PUT", "b", "to", headers={"x-amz-copy-source": "/b/from%20here"}), "CopyObject",
         [("s3:PutObject", "arn:aws:s3:::b/to", {}), ("s3:GetObject", "arn:aws:s3:::b/from here", {})]),
        (request("POST", "b", query={"delete": ""}, body=b"<Delete><Object><Key>a&amp;b</Key></Object></Delete>"),
         "DeleteObjects", [("s3:DeleteObject", "arn:aws:s3:::b/a&b", {})]),
    ],
)  # fmt: skip
def test_s3_requests_map_to_the_iam_actions_aws_documents(s3_request, operation, permissions):
    name, needed = required(s3_request)
    assert name == operation and [(p.action, p.resource, p.context) for p in needed] == permissions


@pytest.mark.parametrize(
    "s3_request",
    [request("GET", "b", "k", query={"acl": ""}), request("PUT", "b", query={"policy": ""}),
     request("DELETE", "b"), request("GET", "b", query={"uploads": ""})],
)  # fmt: skip
def test_s3_requests_outside_the_table_are_unknown(s3_request):
    assert required(s3_request) is None  # an enforcing server refuses them: a new call needs a policy review
