"""Unit selections: '0-15', '3,7,10-12', a list, or None for every unit of a layer."""

from __future__ import annotations

import re

from repsub.errors import UsageError, shown

# One range: 'A' or 'A-B', ASCII digits only (int() would also take '+3', '1_0' and other scripts' digits).
_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_SYNTAX = "expected ranges like 0-15 or 3,7,10-12"
MAX_DIGITS = 18  # an index beyond an int64 is no unit of any layer (and int() of 4300 digits raises)


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    """The (first, last) ranges of a spec; a malformed one ('1-', '', '-3', '1,,2') is refused, named."""
    if not isinstance(spec, str):
        raise UsageError(f"--units {shown(spec)}: {_SYNTAX}")
    ranges = []
    for part in spec.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise UsageError(f"--units {shown(spec)}: {_SYNTAX} (not {shown(part.strip())})")
        first, last = match.groups()
        if max(len(first), len(last or "")) > MAX_DIGITS:
            raise UsageError(f"--units {shown(spec)}: a unit index of more than {MAX_DIGITS} digits")
        ranges.append((int(first), int(last if last is not None else first)))
    bad = [f"{a}-{b}" for a, b in ranges if b < a]
    if bad:
        raise UsageError(f"--units {shown(spec)}: ranges must be ascending: {shown(', '.join(bad))[1:-1]}")
    return ranges


def parse_units(spec: str | list[int] | None, n_units: int, layer: str) -> list[int]:
    """Sorted unique unit indices of a layer of `n_units`; any index outside it is an error naming the layer."""
    if spec is None:
        return list(range(n_units))
    if isinstance(spec, str):
        ranges = parse_ranges(spec)
        # Never materialize past the layer: '0-99999999' must not allocate a hundred million ints.
        units = {u for a, b in ranges for u in range(a, min(b, n_units - 1) + 1)}
        # The first few indices past the layer of each range, for the message (an index far past it counts).
        outside = sorted(
            {
                u
                for a, b in ranges
                if b >= n_units
                for u in range(max(a, n_units), min(b, max(a, n_units) + 9) + 1)
            }
        )
    else:
        units = {_index(u, spec) for u in spec}
        outside = sorted(u for u in units if not 0 <= u < n_units)
    if outside:
        raise UsageError(f"layer {layer} has units 0-{n_units - 1}; out of range: {shown(outside[:10])}")
    if not units:
        raise UsageError(f"--units {shown(spec)} selects no unit")
    return sorted(units)


def _index(unit, spec) -> int:
    """An integer index (numpy's too); a bool, float or text is refused, not truncated."""
    if isinstance(unit, bool) or not hasattr(unit, "__index__"):
        raise UsageError(f"--units {shown(spec)}: expected unit indices (integers) or ranges text")
    return unit.__index__()


def units_within(spec: str | None, n_units: int) -> list[int]:
    """The selected units that a layer of `n_units` has (a sweep applies one selection to layers of every size)."""
    if spec is None:
        return list(range(n_units))
    return sorted({u for a, b in parse_ranges(spec) for u in range(a, min(b, n_units - 1) + 1)})


def ranges_text(units, separator: str = ",") -> str:
    """Unit indices as compact ranges, sorted, duplicates dropped: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (what
    parse_units reads back); separator=", " for prose."""
    units = sorted({int(u) for u in units})
    parts, start = [], None
    for i, unit in enumerate(units):
        if start is None:
            start = unit
        if i + 1 == len(units) or units[i + 1] != unit + 1:
            parts.append(str(start) if start == unit else f"{start}-{unit}")
            start = None
    return separator.join(parts)


def parse_layer_names(value, option: str = "--layers") -> list[str] | None:
    """Layer names from 'a,b' text or a list; None (every layer) only for None. A value that names no layer
    ('', ',', []) is refused: taking it for 'every layer' would silently do something else than asked."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise UsageError(f"{option} {shown(value)}: expected layer names, comma-separated or a list")
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise UsageError(
            f"{option} {shown(value)} names no layer: give layer names (repsub layers --model M lists them), "
            "or all"
        )
    return names
