"""The `--address` of a sweep, checked before the run is locked: a form Ray's driver takes, and, for a cluster
named by host and port, one that answers within a few seconds (Ray's own wait is 30 s or more, then a
traceback). Light: no Ray import."""

from __future__ import annotations

import socket

from repsub.errors import UsageError, shown

FORMS = "auto, local, ray://HOST:PORT (Ray Client) or HOST:PORT (the cluster's GCS)"
CONNECT_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001


def check_address(address: str | None, option: str = "--address") -> None:
    """Refuse an address Ray cannot use, and one nothing listens at (named, with why)."""
    if address in (None, "auto", "local"):
        return
    if not isinstance(address, str):
        raise UsageError(f"{option} {shown(address)}: expected {FORMS}")
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":
        raise UsageError(
            f"{option} {shown(address)}: Ray's driver cannot use {scheme}:// addresses; give {FORMS}"
        )
    target = rest if sep else address
    host, colon, port_text = target.rstrip("/").rpartition(":")
    if not colon:
        host, port_text = target.rstrip("/"), str(RAY_CLIENT_PORT) if sep else ""
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{option} {shown(address)}: expected {FORMS}")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UsageError(
            f"{option} {shown(address)}: no Ray cluster answers at {host}:{port_text} ({why}, within "
            f"{CONNECT_TIMEOUT_S:.0f} s); is the cluster up and the port reachable?"
        ) from None
