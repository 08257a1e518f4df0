"""The command prologue (repsub.commands.context), done once: selectivity, visualize and importance agree on
which image size they take from a run (their own table's rows first, then the run's others, else the model's),
checked on the rule and through the commands themselves."""

from __future__ import annotations

import pytest

import repsub
from repsub.commands.context import CommandContext
from repsub.models import load_model
from repsub.runstore.writer import RunWriter
from tests.run_helpers import record_command

TABLES = ("selectivity", "units", "importance")


def model():
    return load_model("shallow_cnn", weights="random", seed=0, num_classes=3)


def sizes_taken(out) -> dict[str, int]:
    """The image size each command's context takes from the run at `out` when none is given."""
    taken = {}
    for table in TABLES:
        ctx = CommandContext.open(table, out=out, model="shallow_cnn", weights=None, seed=None, device="cpu",
                                  layers=None, image_size=None, mean=None, std=None)  # fmt: skip
        taken[table] = ctx.image_size(None)
    return taken


def make_run(tmp_path, commands: list[tuple[str, dict]]):
    out = tmp_path / "run"
    writer = RunWriter(out)
    identity = model().identity()
    for command, config in commands:
        record_command(writer, command, identity, config)
    return out


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        ([], {"selectivity": 32, "units": 32, "importance": 32}),  # a new run: the model's own size
        ([("selectivity", {"image_size": 24})], {"selectivity": 24, "units": 24, "importance": 24}),
        (
            [("visualize/am", {"settings": {"image_size": 16}})],
            {"selectivity": 16, "units": 16, "importance": 16},
        ),
        ([("importance/zero", {"image_size": 20})], {"selectivity": 20, "units": 20, "importance": 20}),
        (
            [
                ("selectivity", {"image_size": 24}),
                ("visualize/am", {"settings": {"image_size": 16}}),
                ("importance/zero", {"image_size": 20}),
            ],
            {"selectivity": 24, "units": 16, "importance": 20},  # each its own table's
        ),
        (
            [("visualize/iam", {"settings": {"image_size": 16}}), ("importance/mean", {"image_size": 20})],
            {"selectivity": 16, "units": 16, "importance": 20},  # no selectivity: units' before importance's
        ),
        (  # a sweep: its optimization's size, its selectivity pass's (default: the optimization's)
            [
                (
                    "sweep",
                    {"optimization": {"image_size": 16}, "selectivity": {"data": "d", "image_size": None}},
                )
            ],
            {"selectivity": 16, "units": 16, "importance": 16},
        ),
        (
            [
                (
                    "sweep",
                    {
                        "optimization": {"image_size": 16},
                        "selectivity": {"data": "d", "image_size": 24},
                        "importance": {"data": "d", "image_size": 20},
                    },
                )
            ],
            {"selectivity": 24, "units": 16, "importance": 20},
        ),
    ],
    ids=["new", "selectivity", "units", "importance", "all-three", "no-selectivity", "sweep", "sweep-sizes"],
)
def test_one_image_size_priority_for_every_command(tmp_path, commands, expected):
    out = make_run(tmp_path, commands)
    assert sizes_taken(out) == expected


def test_a_given_size_wins_and_another_model_takes_nothing(tmp_path):
    out = make_run(tmp_path, [("selectivity", {"image_size": 24})])
    for table in TABLES:
        ctx = CommandContext.open(table, out=out, model="shallow_cnn", weights=None, seed=None, device="cpu",
                                  layers=None, image_size=None, mean=None, std=None)  # fmt: skip
        assert ctx.image_size(28) == 28
        other = CommandContext.open(table, out=out, model="mlp", weights="random", seed=None, device="cpu",
                                    layers=None, image_size=None, mean=None, std=None)  # fmt: skip
        assert not other.reuse and other.image_size(None) == other.model.image_size


def test_the_commands_take_the_same_size(tmp_path, image_folder_dir):
    """Through the commands: a run whose only rows are AM images at 16 px; selectivity and importance without a
    size take 16, and a visualize of another method too."""
    out = tmp_path / "run"
    common = {"layers": ["conv1"], "device": "cpu", "progress": False}
    repsub.visualize(model=model(), method="am", units="0-1", steps=1, image_size=16, out=out, **common)
    quiet = {**common, "workers": 0}
    sel = repsub.selectivity(data=image_folder_dir, out=out, precision="fp32", **quiet)
    imp = repsub.importance(data=image_folder_dir, out=out, units="0", **quiet)
    iam = repsub.visualize(method="iam", units="0", steps=1, out=out, **common)
    assert sel.num_rows == 64 and imp.num_rows == iam.num_rows == 1  # conv1: 64 units
    configs = repsub.open_run(out).manifest["commands"]
    assert configs["selectivity"]["config"]["image_size"] == 16
    assert configs["importance/zero"]["config"]["image_size"] == 16
    assert configs["visualize/iam"]["config"]["settings"]["image_size"] == 16
