"""Local copies of `.beton` files that live on S3: FFCV reads local files (it memory-maps them).

A copy is keyed by the object's URI and ETag, so a changed object is fetched again and an unchanged
one never is; it is downloaded to a hidden name and renamed into place, so an interrupted download
is never used. The cache keeps at most `limit_bytes`, evicting the least recently used copies.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from repsub.errors import DataError
from repsub.runstore.storage import explain_s3_error, s3_client, split_s3

DEFAULT_LIMIT_BYTES = int(float(os.environ.get("REPSUB_STAGING_LIMIT_GB", "200")) * 2**30)


def staging_dir() -> Path:
    cache = os.environ.get("REPSUB_CACHE", str(Path.home() / ".cache" / "repsub"))
    return Path(cache).expanduser() / "staged"


def stage_beton(
    uri: str, cache_dir: Path | None = None, limit_bytes: int = DEFAULT_LIMIT_BYTES
) -> tuple[Path, str]:
    """A local copy of an S3 `.beton` and, beside it, of its JSON sidecar (if any): (path, etag)."""
    local, etag = stage(uri, cache_dir, limit_bytes)
    try:
        sidecar, _ = stage(uri + ".json", cache_dir, limit_bytes, target=Path(str(local) + ".json"))
    except DataError:  # no sidecar: BetonSource explains what it lacks
        Path(str(local) + ".json").unlink(missing_ok=True)
    return local, etag


def stage(
    uri: str,
    cache_dir: Path | None = None,
    limit_bytes: int = DEFAULT_LIMIT_BYTES,
    target: Path | None = None,
) -> tuple[Path, str]:
    """A local copy of the object at `uri` (s3://bucket/key): (path, etag). `target` fixes the local name."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    client = s3_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise DataError(f"--data {uri}: no such object") from None
        raise explain_s3_error(err, uri) from None
    except BotoCoreError as err:
        raise explain_s3_error(err, uri) from None
    etag = head["ETag"].strip('"')
    directory = cache_dir or staging_dir()
    directory.mkdir(parents=True, exist_ok=True)
    suffix = "".join(Path(key).suffixes[-2:]) or ".bin"
    local = target or directory / (hashlib.sha256(f"{uri}|{etag}".encode()).hexdigest()[:24] + suffix)
    if target is None and local.is_file() and local.stat().st_size == head["ContentLength"]:
        os.utime(local)  # recently used
        return local, etag
    _evict(directory, limit_bytes - head["ContentLength"], keep=local)
    partial = local.parent / f".partial-{uuid.uuid4().hex}"
    try:
        client.download_file(bucket, key, str(partial))
        if partial.stat().st_size != head["ContentLength"]:
            raise DataError(
                f"{uri}: downloaded {partial.stat().st_size} bytes, expected {head['ContentLength']}"
            )
        partial.rename(local)
    except (ClientError, BotoCoreError) as err:
        raise explain_s3_error(err, uri) from None
    finally:
        partial.unlink(missing_ok=True)
    return local, etag


def _evict(directory: Path, budget: int, keep: Path) -> None:
    """Delete least recently used copies until the rest fit in `budget` bytes."""
    copies = sorted(
        (p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and p != keep),
        key=lambda p: p.stat().st_mtime,
    )
    total = sum(p.stat().st_size for p in copies)
    for path in copies:
        if total <= budget:
            break
        total -= path.stat().st_size
        path.unlink(missing_ok=True)
