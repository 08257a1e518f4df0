"""An S3 server that enforces AWS identity policies, for testing the shipped IAM policies with real clients.

    server = EnforcingS3()                       # moto in server mode on a free loopback port
    server.create_bucket("repsub-test")          # set-up runs unauthenticated...
    keys = server.create_user("worker", policy)  # an IAM user with the policy inline, and its access keys
    server.enforce()                             # ...then every request must be signed and allowed

moto (PyPI `moto[server]`) provides the S3 API, IAM users, access keys and SigV4 verification. Its own
authorization (turned on by INITIAL_NO_AUTH_ACTION_COUNT) differs from AWS where it matters here, so this
server decides with `infra.iam_policy` and `infra.s3_permissions` instead:

- moto authorizes HeadBucket as a fictitious `s3:HeadBucket`; AWS requires `s3:ListBucket` on the bucket;
- moto's condition engine knows StringEquals only (StringLike is ignored, i.e. passes), gives S3 requests no
  `s3:prefix` context, and turns a failed condition into an explicit deny; AWS evaluates `s3:prefix` and a
  failed condition only makes the statement not apply;
- moto answers 404 for a missing key to anyone allowed s3:GetObject; AWS answers 404 only to a principal with
  s3:ListBucket on the bucket, 403 otherwise (which pyarrow reports as an error);
- moto checks CopyObject's target only; AWS also requires s3:GetObject on the source.

Every authorization decision is appended to an audit file (JSON lines: principal, operation, permissions,
decisions), so a test can say which actions a command needed. The server is a development tool: it listens
on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from infra.iam_policy import decide
from infra.s3_permissions import Permission, S3Request, bucket_arn, required
from infra.seaweed import free_ports, stop_process

REGION = "us-east-1"
# Set-up credentials: accepted while the server does not enforce (moto checks nothing then).
SETUP_KEYS = {"AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}


def _install_enforcement(audit_path: str) -> None:
    """Replace moto's S3 authorization by AWS's rules (see the module docstring). Runs in the server process."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.access_control import IAMPolicy, S3IAMRequest
    from moto.s3.responses import S3Response

    lock = threading.Lock()

    def audit(record: dict) -> None:
        with lock, open(audit_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def authorize(self, bucket_name: str | None = None, key_name: str | None = None) -> None:
        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            ActionAuthenticatorMixin.request_count += 1  # the set-up phase: nothing is checked
            return
        query_text = urlparse(self.uri).query
        request = S3Request(
            method=self.method,
            bucket=bucket_name,
            key=unquote(key_name) if key_name else None,
            query={k: v[0] for k, v in parse_qs(query_text, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.raw_body if isinstance(self.raw_body, bytes) else b"",
        )
        needed = required(request)
        iam_request = S3IAMRequest(  # moto's authentication: a known access key and a valid signature
            account_id=self.current_account,
            method=self.method,
            path=self.raw_path + (f"?{query_text}" if query_text else ""),
            data=self.data,
            body=self.raw_body,
            headers=self.headers,
            action=needed[0] if needed else "Unknown",
        )
        iam_request.check_signature()
        principal = iam_request._access_key.arn
        policies = [IAMPolicy(p)._policy_json for p in iam_request._access_key.collect_policies()]
        operation, permissions = needed or (f"unknown: {request.method} {request.query}", [])
        if operation in ("HeadObject", "GetObject") and bucket_name and not _object_exists(self, request):
            # AWS tells a missing key apart from a forbidden one only to those who may list the bucket.
            permissions = [*permissions, Permission("s3:ListBucket", bucket_arn(bucket_name))]
        decisions = [decide(policies, p.action, p.resource, p.context) for p in permissions]
        allowed = bool(permissions) and all(d == "allow" for d in decisions)
        audit({
            "principal": principal, "operation": operation, "allowed": allowed,
            "permissions": [[p.action, p.resource, p.context, d] for p, d in zip(permissions, decisions, strict=True)],
        })  # fmt: skip
        if not allowed:
            iam_request._raise_access_denied()

    S3Response._authenticate_and_authorize_s3_action = authorize


def _object_exists(response, request: S3Request) -> bool:
    try:
        return response.backend.get_object(request.bucket, request.key) is not None
    except Exception:  # a missing bucket: no object either
        return False


class EnforcingS3:
    """The server as a child process on a free loopback port, with helpers for set-up and the audit."""

    def __init__(self, log_dir: str | None = None):
        self.dir = log_dir or tempfile.mkdtemp(prefix="iam-s3-")
        self.port = free_ports(1)[0]
        self.audit_path = Path(self.dir, "audit.jsonl")
        log = open(Path(self.dir, "server.log"), "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infra.iam_s3_server", "--port", str(self.port), "--audit", str(self.audit_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(Path(self.dir, "server.log").read_text()[-2000:])
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the IAM-enforcing S3 server did not start") from None
                time.sleep(0.2)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, keys: dict[str, str]) -> dict[str, str]:
        """The standard AWS variables that point any client at this server with these keys."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, **keys}

    def client(self, service: str = "s3", keys: dict[str, str] | None = None):
        import boto3
        from botocore.config import Config

        keys = keys or SETUP_KEYS
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )  # fmt: skip

    def create_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def create_user(self, name: str, policy: dict | None) -> dict[str, str]:
        """An IAM user with `policy` inline (None: no policy at all); returns its keys as AWS_* variables."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def enforce(self) -> None:
        """From now on every request is authenticated and authorized (moto's INITIAL_NO_AUTH_ACTION_COUNT = 0)."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"

    def audit(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def close(self) -> None:
        stop_process(self.proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.iam_s3_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--audit", required=True, help="file to append authorization decisions to")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    _install_enforcement(args.audit)
    import moto.server

    moto.server.main(["-H", "127.0.0.1", "-p", str(args.port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
