"""Which IAM permissions AWS requires for an S3 REST request: the operation, then (action, resource, context).

From the S3 API reference ("Permissions" of each operation) for the operations repsub, pyarrow, boto3,
duckdb and polars issue against a run or a staged `.beton`:

| request | operation | IAM action, resource |
| --- | --- | --- |
| HEAD /bucket | HeadBucket | s3:ListBucket on the bucket (no s3:prefix in the context) |
| GET /bucket?list-type=2, GET /bucket | ListObjectsV2, ListObjects | s3:ListBucket on the bucket, s3:prefix = the prefix ('' without one) |
| GET /bucket?location | GetBucketLocation | s3:GetBucketLocation on the bucket |
| HEAD, GET /bucket/key | HeadObject, GetObject | s3:GetObject on the object (a missing key answers 404 only with s3:ListBucket on the bucket, else 403) |
| PUT /bucket/key (also with If-None-Match) | PutObject | s3:PutObject on the object |
| POST ?uploads, PUT ?partNumber&uploadId, POST ?uploadId | Create/UploadPart/CompleteMultipartUpload | s3:PutObject on the object |
| PUT with x-amz-copy-source | CopyObject, UploadPartCopy | s3:PutObject on the target and s3:GetObject on the source |
| DELETE /bucket/key | DeleteObject | s3:DeleteObject on the object |
| DELETE ?uploadId | AbortMultipartUpload | s3:AbortMultipartUpload on the object |
| GET ?uploadId | ListParts | s3:ListMultipartUploadParts on the object |
| POST /bucket?delete | DeleteObjects | s3:DeleteObject on each object named in the body |
| PUT /bucket | CreateBucket | s3:CreateBucket on the bucket |

Any other request is `None` (unknown): an enforcing server refuses it, so a new kind of call shows up as a
failing test and a policy review rather than passing unexamined.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from urllib.parse import unquote


@dataclass(frozen=True)
class Permission:
    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class S3Request:
    method: str
    bucket: str | None
    key: str | None
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""


def bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def required(request: S3Request) -> tuple[str, list[Permission]] | None:
    """(operation name, permissions it needs), or None for a request outside the table above."""
    method, bucket, key, query = request.method, request.bucket, request.key, request.query
    if not bucket:
        return ("ListBuckets", [Permission("s3:ListAllMyBuckets", "*")]) if method == "GET" else None
    if not key:
        return _bucket_request(method, bucket, query, request.body)
    target = object_arn(bucket, key)
    if method in ("HEAD", "GET"):
        if "uploadId" in query:
            return "ListParts", [Permission("s3:ListMultipartUploadParts", target)]
        if set(query) - {"partNumber", "response-content-type"}:
            return None  # ?acl, ?tagging, ?versionId...: not used by repsub, not granted
        return ("HeadObject" if method == "HEAD" else "GetObject"), [Permission("s3:GetObject", target)]
    if method == "PUT":
        if set(query) - {"partNumber", "uploadId"}:
            return None
        copy_source = request.headers.get("x-amz-copy-source")
        operation = "UploadPart" if "uploadId" in query else "PutObject"
        permissions = [Permission("s3:PutObject", target)]
        if copy_source:
            source_bucket, _, source_key = unquote(copy_source).lstrip("/").partition("/")
            source_key = source_key.split("?versionId=")[0]
            operation = "UploadPartCopy" if "uploadId" in query else "CopyObject"
            permissions.append(Permission("s3:GetObject", object_arn(source_bucket, source_key)))
        return operation, permissions
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload", [Permission("s3:PutObject", target)]
        if "uploadId" in query:
            return "CompleteMultipartUpload", [Permission("s3:PutObject", target)]
        return None
    if method == "DELETE":
        if "uploadId" in query:
            return "AbortMultipartUpload", [Permission("s3:AbortMultipartUpload", target)]
        if query:
            return None
        return "DeleteObject", [Permission("s3:DeleteObject", target)]
    return None


def _bucket_request(method: str, bucket: str, query: dict[str, str], body: bytes):
    arn = bucket_arn(bucket)
    if method == "HEAD" and not query:
        return "HeadBucket", [Permission("s3:ListBucket", arn)]
    if method == "GET":
        if "location" in query:
            return "GetBucketLocation", [Permission("s3:GetBucketLocation", arn)]
        listing = {"list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after",
                   "marker", "encoding-type", "fetch-owner"}  # fmt: skip
        if set(query) <= listing:
            context = {"s3:prefix": query.get("prefix", "")}
            for name in ("delimiter", "max-keys"):
                if name in query:
                    context[f"s3:{name}"] = query[name]
            operation = "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
            return operation, [Permission("s3:ListBucket", arn, context)]
        return None
    if method == "PUT" and not query:
        return "CreateBucket", [Permission("s3:CreateBucket", arn)]
    if method == "POST" and set(query) == {"delete"}:
        keys = [html.unescape(k.decode()) for k in re.findall(rb"<Key>(.*?)</Key>", body or b"", re.DOTALL)]
        return "DeleteObjects", [Permission("s3:DeleteObject", object_arn(bucket, k)) for k in keys]
    return None
