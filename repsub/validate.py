"""Checks of inputs shared by the commands, the Python API and the sweep config: each bad value a UsageError that
names the option (or config key) and the value, before anything is loaded or written."""

from __future__ import annotations

import errno
import math
import os
import tempfile

from repsub.errors import UsageError, shown

SEED_LIMIT = 2**63  # seeds are int64 in the units table, and torch's generators take no more
INT_LIMIT = 2**63  # every count is stored or used as an int64: larger is refused, never wrapped


def check_int(value, option: str, minimum: int, maximum: int = INT_LIMIT - 1) -> int:
    """An integer (not a bool) within [minimum, maximum] (default: what an int64 holds)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{option} must be an integer, got {shown(value)}")
    if value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {shown(value)}")
    if value > maximum:
        bound = "below 2**63" if maximum == INT_LIMIT - 1 else f"at most {maximum}"
        raise UsageError(f"{option} must be {bound}, got {shown(value)}")
    return value


def check_seed(seed, option: str = "--seed") -> int:
    return check_int(seed, option, 0, SEED_LIMIT - 1)


def check_number(value, option: str, minimum: float = 0.0, positive: bool = False) -> float:
    """A finite number of at least `minimum` (above it when `positive`)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {shown(value)}")
    if value < minimum or (positive and value <= minimum):
        raise UsageError(f"{option} must be {'above' if positive else 'at least'} {minimum}, got {value}")
    return float(value)


def check_output_dir(location, option: str = "--out") -> None:
    """A local directory a command can create or write into, refused before any work otherwise: a file, a
    symlink loop, a read-only or pseudo file system (/proc), a path with a file where a directory belongs.
    The test is the real one: a hidden directory made and removed in the nearest directory that exists.
    URIs (s3://) are checked by their storage."""
    text = os.fspath(location)
    if "://" in text and not text.startswith("file://"):
        return
    path = os.path.abspath(text.removeprefix("file://"))
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise UsageError(f"{option} {shown(text)}: {_reason(err)}") from None
    else:
        if not os.path.isdir(path):
            raise UsageError(f"{option} {shown(text)} is a file, not a directory: give a directory")
    _check_writable(_nearest_existing(path), text, option)


def check_output_file(location, option: str = "--out") -> None:
    """A file a command will write (train's state_dict): its directory exists and is writable, and the path
    is no directory; checked before the work whose result it keeps."""
    path = os.path.abspath(os.fspath(location))
    if os.path.isdir(path):
        raise UsageError(f"{option} {shown(str(location))} is a directory: give the path of a file to write")
    parent = os.path.dirname(path)
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise UsageError(f"{option} {shown(str(location))}: {parent} is a file, not a directory")
    if not os.path.isdir(parent):
        raise UsageError(f"{option} {shown(str(location))}: the directory {parent} does not exist")
    _check_writable(parent, str(location), option)


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _check_writable(directory: str, text: str, option: str) -> None:
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {shown(text)}: {directory} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".repsub-probe-", dir=directory))
    except OSError as err:
        raise UsageError(f"{option} {shown(text)}: cannot write in {directory} ({_reason(err)})") from None


def _reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "a symlink loop (a link that points back to itself)"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "read-only or not permitted"
    if err.errno == errno.ENOTDIR:
        return "a file stands where the path needs a directory"
    if err.errno == errno.ENOENT:  # it exists, yet nothing can be made in it: /proc, /sys
        return "a pseudo file system that holds no new directories"
    return err.strerror or str(err)
