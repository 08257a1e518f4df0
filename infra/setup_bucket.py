"""Create and harden the results bucket; safe to run again (every step is idempotent).

    python -m infra.setup_bucket BUCKET [--region us-east-1]

Steps: create the bucket (if missing), block all public access, default encryption (SSE-S3), and a
lifecycle rule that aborts incomplete multipart uploads after one day (an interrupted upload is never
a result, but its parts cost money until aborted). Endpoint and credentials come from the standard AWS
environment (AWS_ENDPOINT_URL for an S3-compatible server). A step the server does not implement is
reported and skipped, not failed (SeaweedFS has no public-access block).
"""

from __future__ import annotations

import argparse
import sys

from botocore.exceptions import ClientError

from repsub.runstore.storage import s3_client

LIFECYCLE = {
    "Rules": [{
        "ID": "abort-incomplete-multipart-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }]
}  # fmt: skip
ENCRYPTION = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                       "RestrictPublicBuckets": True}  # fmt: skip


def setup_bucket(bucket: str, region: str = "us-east-1", client=None) -> dict[str, str]:
    """Apply every step; returns {step: "done" | "already" | "unsupported: ..."}."""
    client = client or s3_client()
    report = {}
    try:
        kwargs = (
            {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        )
        client.create_bucket(Bucket=bucket, **kwargs)
        report["create"] = "done"
    except ClientError as err:
        if err.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        report["create"] = "already"
    steps = {
        "block public access": lambda: client.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK),
        "default encryption": lambda: client.put_bucket_encryption(
            Bucket=bucket, ServerSideEncryptionConfiguration=ENCRYPTION),
        "abort incomplete uploads after 1 day": lambda: client.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration=LIFECYCLE),
    }  # fmt: skip
    for name, apply in steps.items():
        try:
            apply()
            report[name] = "done"
        except ClientError as err:
            code = err.response["Error"]["Code"]
            if code not in ("NotImplemented", "501"):
                raise
            report[name] = f"unsupported by this server ({code})"
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.setup_bucket", description=__doc__.splitlines()[0])
    parser.add_argument("bucket")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    for step, outcome in setup_bucket(args.bucket, args.region).items():
        print(f"{step}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
