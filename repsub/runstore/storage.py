"""Where runs live: local paths or `s3://bucket/prefix`, behind one pyarrow filesystem interface.

S3 settings come from the environment as AWS tools read it: credentials from the standard chain
(environment, profile, instance role: repsub never stores them), the endpoint from
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (for S3-compatible stores), overridable per sweep by the
config's `storage.endpoint_url`. Every S3 request retries transient errors with backoff. Errors name
the endpoint and bucket, never a credential: a location or endpoint that carries one (user info
`user:secret@`, a query string `?secret_key=...`, a fragment) is refused without being repeated, and text
from a library is scrubbed of URL credentials and key ids before it reaches a message.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from repsub.errors import RunError

S3_ATTEMPTS = 5  # per request, with the SDK's exponential backoff


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None  # None: AWS itself (or the environment's endpoint)
    region: str | None = None


_override = S3Settings()
ENDPOINT_SOURCES = ("the sweep config's storage.endpoint_url", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def configure_s3(endpoint_url: str | None = None, region: str | None = None) -> None:
    """Use this endpoint/region for s3:// locations in this process (the sweep config's `storage` key)."""
    global _override
    if endpoint_url:
        check_endpoint(endpoint_url, ENDPOINT_SOURCES[0])
    _override = S3Settings(endpoint_url, region)


def _endpoint_and_source() -> tuple[str | None, str]:
    values = (
        _override.endpoint_url,
        os.environ.get("AWS_ENDPOINT_URL_S3"),
        os.environ.get("AWS_ENDPOINT_URL"),
    )
    return next(((v, src) for v, src in zip(values, ENDPOINT_SOURCES, strict=True) if v), (None, ""))


def s3_settings() -> S3Settings:
    endpoint, source = _endpoint_and_source()
    if endpoint:
        check_endpoint(endpoint, source)
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
    """The endpoint for messages: never its credentials, even if an unchecked one slipped through."""
    endpoint, _ = _endpoint_and_source()
    if endpoint:
        return f"S3 endpoint {redact_url(endpoint)}"
    return f"AWS S3 ({s3_settings().region})"


def redact_url(url: str) -> str:
    """scheme://host[:port]/path of a URL: user info (up to the last '@': a secret key may hold '/'), query
    string and fragment dropped."""
    scheme, separator, rest = url.partition("://") if "://" in url else ("", "", url)
    rest = re.split(r"[?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    return f"{scheme}{separator}{rest}"


def _carries_secrets(url: str) -> bool:
    """User info, a query string or a fragment anywhere after the scheme."""
    return any(mark in url.partition("://")[2] for mark in "@?#")


def check_location(text: str | os.PathLike, what: str = "location") -> None:
    """Refuse a URI location (`scheme://...`) that carries user info, a query string or a fragment: where
    credentials hide. The message shows the location without them and never the refused text."""
    text = os.fspath(text)
    if "://" in text and _carries_secrets(text):
        raise RunError(
            f"{what} {redact_url(text)}: a location must not embed credentials or options (user info "
            "'user:secret@', a '?...' query string or a '#...' fragment); the part left out is not shown. "
            "Credentials come from the AWS environment, profile or role"
        )


def check_endpoint(url: str, source: str) -> None:
    """Refuse an S3 endpoint URL that carries user info, a query string or a fragment, naming where it came
    from (the sweep config or an AWS_ENDPOINT_URL variable) without repeating it."""
    if _carries_secrets(url):
        raise RunError(
            f"the S3 endpoint from {source} ({redact_url(url)}) must not embed credentials or options (user "
            "info 'user:secret@', a '?...' query string or a '#...' fragment); the part left out is not "
            "shown. Give keys through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role"
        )


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> ("bucket", "prefix"); refuses credentials or options carried by the URI."""
    check_location(uri)
    parsed = urlparse(uri)
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
        scheme = text.split("://", 1)[0]
        raise RunError(
            f"{scheme}:// locations are not supported (expected a local path or s3://bucket/prefix)"
        )
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def s3_client():
    """A boto3 S3 client for the operations pyarrow lacks (create-only writes, ETags), with the credentials
    the environment names now (as pyarrow's filesystems, made per location, have them)."""
    from botocore.config import Config

    settings = s3_settings()
    config = Config(
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
    )
    session = _session(_credential_environment())
    return session.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config
    )


CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                        "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")  # fmt: skip


def _credential_environment() -> str:
    """A digest of the credential variables (the cache key below holds no secret)."""
    values = "\0".join(os.environ.get(name, "") for name in CREDENTIAL_VARIABLES)
    return hashlib.sha256(values.encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def _session(credential_environment: str):
    """One boto3 session per set of credential variables. botocore keeps a session's credentials once
    resolved, so boto3's default session would go on signing with the first keys it saw (another user's,
    after the environment changed)."""
    import boto3

    return boto3.session.Session()


def explain_s3_error(err: Exception, location: str) -> RunError:
    """A storage failure as a RunError naming the endpoint and location, and what it most likely means."""
    text = str(err)
    kinds = [
        (r"NO_SUCH_BUCKET|NoSuchBucket", "the bucket does not exist"),
        (r"ACCESS_DENIED|AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId|\b403\b",
         "access denied: check the AWS credentials (environment, profile or role) and the bucket policy"),
        (r"NETWORK_CONNECTION|curlCode: (6|7|28|52)|Could not connect|EndpointConnectionError|timed? ?out",
         "the endpoint cannot be reached (after retries)"),
    ]  # fmt: skip
    reason = next(
        (meaning for pattern, meaning in kinds if re.search(pattern, text, re.IGNORECASE)), "storage error"
    )
    return RunError(f"{location} on {describe_endpoint()}: {reason} ({_scrub(text)})")


def scrub(text: str) -> str:
    """Text from a library made fit for a message: URL user info, query strings and fragments (where
    presigned signatures and `?secret_key=` live) and AWS key ids removed."""
    text = re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^\s'\"]*@", r"\1", text)  # to the last '@': keys hold '/'
    text = re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"]*)[?#][^\s'\"]*", r"\1", text)
    return re.sub(r"(AKIA|ASIA)[A-Z0-9]{12,}", "<key id>", text)


def _scrub(text: str) -> str:
    """The first line of a library's message, scrubbed (see `scrub`), at most 300 characters."""
    text = scrub(text)
    return text.strip().splitlines()[0][:300] if text.strip() else text


def read_whole(fs: pafs.FileSystem, path: str) -> bytes | None:
    """A file's bytes, None when it does not exist. On S3 in one GET: pyarrow's input stream reads an object in
    ranges after asking its size, so an object replaced meanwhile (the manifest, while a writer commits) could
    be read half old, half new; one GET returns one version whole."""
    if isinstance(fs, pafs.S3FileSystem):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = path.partition("/")
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise explain_s3_error(err, f"s3://{path}") from None
        except BotoCoreError as err:  # no response at all: the endpoint unreachable, a read cut short
            raise explain_s3_error(Exception(f"{type(err).__name__}: {err}"), f"s3://{path}") from None
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def put_if_absent(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Create `path` with `data` only if nothing is there (atomic); False if it already existed."""
    if isinstance(fs, pafs.S3FileSystem):
        from botocore.exceptions import BotoCoreError, ClientError

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
        except BotoCoreError as err:
            raise explain_s3_error(Exception(f"{type(err).__name__}: {err}"), f"s3://{path}") from None
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
