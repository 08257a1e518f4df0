"""The errors repsub reports to a user: the CLI prints their message and exits with status 2; and how a message
shows what the user gave (short, invisible characters escaped)."""

from __future__ import annotations

import unicodedata

SHOWN_CHARS = 80  # an echoed value is cut to this: a message never repeats a megabyte of input


class RepsubError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class UsageError(RepsubError):
    """An unknown model, layer, method or option value; the message lists the valid choices."""


class DataError(RepsubError):
    """A dataset that cannot be used: missing, empty, one class, or an unreadable image (named)."""


class RunError(RepsubError):
    """A run directory that cannot be read or written as asked (schema version, other model...)."""


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)`, cut to `limit` characters with '…' (a huge value is named, not printed)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for repr (Python's 4300-digit limit)
        text = f"<an integer of {value.bit_length()} bits>"
    return cut(text, limit)


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text`, cut to `limit` characters with '…'."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def visible(text) -> str:
    """`text` with its invisible characters written as escapes (`\\u202e`): bidi controls (U+202A-U+202E,
    U+2066-U+2069), other format characters (zero-width joiners, BOM) and control characters (terminal escapes).
    A name (a class, a layer) holding them would show reversed or hidden: visual spoofing in a page or a
    terminal. Newlines and tabs stay."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(
        _escaped(c) if c not in "\n\t" and unicodedata.category(c) in ("Cf", "Cc") else c for c in text
    )


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
