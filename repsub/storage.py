"""Where runs live: local paths or `s3://bucket/prefix`, behind one pyarrow filesystem interface.

S3 settings come from the environment as AWS tools read it: credentials from the standard chain
(environment, profile, instance role: repsub never stores them), the endpoint from
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (for S3-compatible stores), overridable per sweep by the
config's `storage.endpoint_url`. Every S3 request retries transient errors with backoff. Errors name
the endpoint and bucket, never a credential.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from .errors import RunError

S3_ATTEMPTS = 5  # per request, with the SDK's exponential backoff


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None  # None: AWS itself (or the environment's endpoint)
    region: str | None = None


_override = S3Settings()


def configure_s3(endpoint_url: str | None = None, region: str | None = None) -> None:
    """Use this endpoint/region for s3:// locations in this process (the sweep config's `storage` key)."""
    global _override
    _override = S3Settings(endpoint_url, region)


def s3_settings() -> S3Settings:
    endpoint = (
        _override.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = (
        _override.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    return S3Settings(endpoint, region)


def is_s3(uri: str | os.PathLike) -> bool:
    return os.fspath(uri).startswith("s3://")


def describe_endpoint() -> str:
    settings = s3_settings()
    return f"S3 endpoint {settings.endpoint_url}" if settings.endpoint_url else f"AWS S3 ({settings.region})"


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> ("bucket", "prefix"); refuses credentials embedded in the URI."""
    parsed = urlparse(uri)
    if parsed.username or parsed.password or "@" in parsed.netloc:
        # Say so without repeating the URI: it holds a secret.
        raise RunError(
            "an s3:// location must not embed credentials; use the AWS environment, profile or role"
        )
    if not parsed.netloc:
        raise RunError(f"{uri}: no bucket (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.strip("/")


def filesystem_for(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path within it of a location (local path or s3:// URI)."""
    text = os.fspath(uri)
    if is_s3(text):
        bucket, prefix = split_s3(text)
        settings = s3_settings()
        options = {
            "region": settings.region,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
            "connect_timeout": 5,
            "request_timeout": 30,
        }
        if settings.endpoint_url:
            endpoint = urlparse(settings.endpoint_url)
            options.update(
                endpoint_override=endpoint.netloc or endpoint.path, scheme=endpoint.scheme or "https"
            )
        return pafs.S3FileSystem(**options), f"{bucket}/{prefix}".rstrip("/")
    if "://" in text:
        raise RunError(f"{text}: unsupported location (expected a local path or s3://bucket/prefix)")
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def s3_client():
    """A boto3 S3 client for the operations pyarrow lacks (create-only writes, ETags)."""
    import boto3
    from botocore.config import Config

    settings = s3_settings()
    config = Config(
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
    )
    return boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)


def explain_s3_error(err: Exception, location: str) -> RunError:
    """A storage failure as a RunError naming the endpoint and location, and what it most likely means."""
    text = str(err)
    kinds = [
        (r"NO_SUCH_BUCKET|NoSuchBucket", "the bucket does not exist"),
        (r"ACCESS_DENIED|AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId|403",
         "access denied: check the AWS credentials (environment, profile or role) and the bucket policy"),
        (r"NETWORK_CONNECTION|curlCode: (6|7|28|52)|Could not connect|EndpointConnectionError|timed? ?out",
         "the endpoint cannot be reached (after retries)"),
    ]  # fmt: skip
    reason = next(
        (meaning for pattern, meaning in kinds if re.search(pattern, text, re.IGNORECASE)), "storage error"
    )
    return RunError(f"{location} on {describe_endpoint()}: {reason} ({_scrub(text)})")


def _scrub(text: str) -> str:
    """Drop anything that looks like a key from a message that came from a library."""
    text = re.sub(r"(AKIA|ASIA)[A-Z0-9]{12,}", "<key id>", text)
    return text.strip().splitlines()[0][:300] if text.strip() else text


def put_if_absent(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Create `path` with `data` only if nothing is there (atomic); False if it already existed."""
    if isinstance(fs, pafs.S3FileSystem):
        from botocore.exceptions import ClientError

        bucket, _, key = path.partition("/")
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
            ):
                return False
            raise explain_s3_error(err, f"s3://{path}") from None
        return True
    # Locally: write a private temporary file, then hard-link it into place (fails if the name exists).
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    staged = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
    with open(staged, "wb") as f:
        f.write(data)
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(staged)
