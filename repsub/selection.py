"""Unit selections: '0-15', '3,7,10-12', a list, or None for every unit of a layer."""

from __future__ import annotations

from repsub.errors import UsageError


def parse_ranges(spec: str) -> list[tuple[int, int]]:
    ranges = []
    try:
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            ranges.append((int(first), int(last or first)))
    except ValueError:
        raise UsageError(f"--units {spec!r}: expected ranges like 0-15 or 3,7,10-12") from None
    bad = [f"{a}-{b}" for a, b in ranges if a < 0 or b < a]
    if bad:
        raise UsageError(f"--units {spec!r}: ranges must be ascending and non-negative: {', '.join(bad)}")
    return ranges


def parse_units(spec: str | list[int] | None, n_units: int, layer: str) -> list[int]:
    """Sorted unique unit indices of a layer of `n_units`; any index outside it is an error naming the layer."""
    if spec is None:
        return list(range(n_units))
    if isinstance(spec, str):
        ranges = parse_ranges(spec)
        # Never materialize past the layer: '0-99999999' must not allocate a hundred million ints.
        units = {u for a, b in ranges for u in range(a, min(b, n_units - 1) + 1)}
        outside = sorted({u for a, b in ranges for u in range(max(a, n_units), min(b, n_units + 9) + 1)})
    else:
        units = {int(u) for u in spec}
        outside = sorted(u for u in units if not 0 <= u < n_units)
    if outside:
        raise UsageError(f"layer {layer} has units 0-{n_units - 1}; out of range: {outside[:10]}")
    if not units:
        raise UsageError(f"--units {spec!r} selects no unit")
    return sorted(units)


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
