"""The run lock: at most one command writes a run location at a time.

`RUN/_lock.json` is created only if absent (a hard link locally, `If-None-Match: *` on S3) and holds its
holder: command, host, pid, user, time and a token of its own. Every writer takes it (repsub.runstore.session):
`selectivity`, `visualize`, `importance` and `sweep`. A lock held by a live process is refused with its
holder named. A lock that is certainly stale is replaced: its pid is dead on this host, or it names this
very process with a token no writer of it holds (an earlier command of this process that could not remove
it). Anything else (another host, an unreadable lock) takes `--force-unlock`, after checking that its holder
is really gone.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import uuid

from repsub.errors import RunError
from repsub.runstore.manifest import now_utc

LOCK = "_lock.json"
_HELD: set[str] = set()  # tokens of the locks this process holds now


class RunLock:
    """The lock of one run location, for one command (`with RunLock(writer, "visualize/am"): ...`)."""

    def __init__(self, writer, command: str = "sweep"):
        self.writer = writer
        self.owner = {
            "command": command, "host": socket.gethostname(), "pid": os.getpid(), "user": _user(),
            "since": now_utc(), "token": uuid.uuid4().hex,
        }  # fmt: skip

    def acquire(self, force: bool = False) -> None:
        if force:
            self.writer.delete(LOCK)
        if self._create():
            return
        held = self.holder()
        if not held and self._create():  # released in between
            return
        if _certainly_stale(held):
            print(
                f"note: removing the stale lock of {held.get('command', 'a writer')} (pid {held.get('pid')}, "
                f"no longer running) on {self.writer.uri}",
                file=sys.stderr,
            )
            self.writer.delete(LOCK)
            if self._create():
                return
            held = self.holder()
        raise RunError(
            f"{self.writer.uri} is locked by another writer: {describe(held)}; one command writes a run at a "
            "time. If that command is no longer running, rerun with --force-unlock"
        )

    def _create(self) -> bool:
        if self.writer.put_if_absent(LOCK, json.dumps(self.owner).encode()):
            _HELD.add(self.owner["token"])
            return True
        return False

    def holder(self) -> dict:
        """The lock's holder; refuses a lock file that is not one (garbage: only --force-unlock removes it)."""
        data = self.writer.get_bytes(LOCK)
        if data is None:
            return {}
        try:
            held = json.loads(data.decode(errors="replace"))
        except json.JSONDecodeError:
            held = None
        if not isinstance(held, dict):
            raise RunError(
                f"{self.writer.uri}/{LOCK} is not a repsub run lock ({len(data)} bytes that are not a JSON "
                "object): if no repsub command is writing this run, rerun with --force-unlock"
            )
        return held

    def release(self) -> None:
        _HELD.discard(self.owner["token"])
        try:
            held = self.holder()
        except RunError:  # someone replaced it with garbage: not ours to remove
            return
        if held.get("token") == self.owner["token"]:  # never remove a lock another command took over
            self.writer.delete(LOCK)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def describe(held: dict) -> str:
    return (
        f"{held.get('command', 'a command')} (host {held.get('host')}, pid {held.get('pid')}, user "
        f"{held.get('user')}, since {held.get('since')})"
    )


def _certainly_stale(held: dict) -> bool:
    if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
        return False
    if held["pid"] == os.getpid():  # this process: stale unless one of its writers holds it now
        return held.get("token") not in _HELD
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return "unknown"
