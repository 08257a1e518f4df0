"""A real Ray head started with `ray start --head` on free loopback ports, in its own temporary directory.

Tests never use `ray stop` (it would kill every Ray process on the machine): the head is stopped by
killing the processes whose command line names this session's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(
        self,
        num_cpus: int = 2,
        extra_args: tuple[str, ...] = (),
        env: dict | None = None,
        port: int | None = None,
    ):
        # A short path: Ray's unix sockets live under it and their paths are limited to ~100 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")
        self.port = port or free_port()
        self.dashboard_port = free_port()
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **(env or {})}
        ports = {
            "--port": self.port,
            "--dashboard-port": self.dashboard_port,
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--ray-client-server-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--metrics-export-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        args = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            *(f"{k}={v}" for k, v in ports.items()),
            *extra_args,
        ]
        subprocess.run(args, env=self.env, check=True, capture_output=True, timeout=120)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def run(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        victims = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if any(self.temp_dir in part for part in (p.info["cmdline"] or []))
        ]
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(victims, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
