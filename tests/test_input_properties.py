"""Property-based tests of the input parsers: whatever a user writes, a result that obeys the rules or a
UsageError that names it; never another exception."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repsub.errors import UsageError
from repsub.selection import parse_layer_names, parse_ranges, parse_units, ranges_text
from repsub.sweep.config import parse_config

unit_sets = st.sets(st.integers(min_value=0, max_value=300), min_size=1, max_size=40)
specs = st.text(alphabet="0123456789-, +_\u0661\u202e", max_size=12)


@given(unit_sets)
def test_ranges_text_reads_back_as_the_same_units(units):
    assert parse_units(ranges_text(units), 301, "x") == sorted(units)
    assert ranges_text(parse_units(ranges_text(units), 301, "x")) == ranges_text(units)


@given(specs, st.integers(min_value=1, max_value=64))
def test_a_unit_spec_gives_sorted_unique_units_in_range_or_a_usage_error_naming_it(spec, n_units):
    try:
        units = parse_units(spec, n_units, "layer")
    except UsageError as err:
        assert repr(spec)[:40].rstrip("'") in str(err) or "layer layer has units" in str(err)
        return
    assert units == sorted(set(units)) and units and all(0 <= u < n_units for u in units)
    assert set(units) == {u for a, b in parse_ranges(spec) for u in range(a, b + 1)}


@given(st.one_of(st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3), st.none(), st.integers()))
def test_layer_names_are_names_or_a_usage_error(value):
    try:
        names = parse_layer_names(value)
    except UsageError as err:
        assert "--layers" in str(err)
        return
    assert names is None if value is None else (names and all(n and n == n.strip() for n in names))


BASE = {"model": "shallow_cnn", "out": "runs/x", "layers": ["fc6"], "methods": ["am"],
        "optimization": {"steps": 1, "image_size": 16}}  # fmt: skip
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                      st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=6)  # fmt: skip
keys = st.sampled_from([*BASE, "seed", "units", "device", "reduce", "weights", "allow_mixed", "workers",
                        "sharding", "selectivity", "importance", "storage", "bogus", 3])  # fmt: skip
section_keys = st.sampled_from(["count", "gpus", "cpus", "steps", "lr", "image_size", "units_per_shard", "x"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=3), st.dictionaries(section_keys, scalars, max_size=2))
def test_a_mutated_sweep_config_is_accepted_or_refused_with_a_short_usage_error(changes, section):
    raw = {**BASE, **changes}
    if "workers" not in changes:
        raw["workers"] = section
    try:
        config = parse_config(raw)
    except UsageError as err:
        assert len(str(err)) < 700, str(err)
        return
    assert parse_config(config.to_dict()) == config


@pytest.mark.parametrize("units", ["0", "0-3,7", [1, 2]])
def test_a_valid_config_round_trips(units):
    config = parse_config({**BASE, "units": units})
    assert parse_config(config.to_dict()) == config


@pytest.mark.parametrize("char", ["\u202a", "\u202e", "\u2066", "\u2069", "\u200b", "\ufeff", "\x1b"])
def test_invisible_characters_in_names_are_shown_escaped_in_the_page_and_summaries(char):
    from repsub.analysis.explorer import _visible_names
    from repsub.analysis.page import esc
    from repsub.analysis.summary import format_table

    name = f"cat{char}god"
    escaped = f"cat\\u{ord(char):04x}god"
    for shown_text in (esc(name), format_table([{"layer": name}]), _visible_names([name])[0]):
        assert char not in shown_text and escaped in shown_text
    assert esc("chat é\n") == "chat é\n"  # visible text stays as it is
