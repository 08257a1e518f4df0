"""The optimization settings are declared once (repsub.optimize.settings): a setting added in a subclass of
OptimSettings reaches every consumer without being listed anywhere else: what a command extending a run takes
from it, the units meaning (and so the rule against mixing), the command line's options and what it passes on,
the sweep config's `optimization:` section and its checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import repsub
from repsub.cli import _given, build_parser
from repsub.commands.extend import RunRecord, settings_for_run
from repsub.errors import RunError, UsageError
from repsub.optimize.settings import OptimSettings, meaning_names, reused_names, setting
from repsub.runstore.provenance import MEANING, units_meaning
from repsub.sweep import parse_config


@dataclass(frozen=True)
class Blurred(OptimSettings):
    """OptimSettings with one more setting, declared as the others are."""

    blur: float = setting(0.0, meaning=True, reused=True, help="blur radius in pixels", maximum=4.0)


BASE = {"model": "shallow_cnn", "out": "/tmp/x"}


def test_the_declaration_gives_the_lists_that_were_kept_by_hand():
    """The lists every consumer had its own copy of, now derived (the copies' content before issue 17, and
    rescue_rounds since issue 18)."""
    assert reused_names() == ("steps", "lr", "image_size", "param", "jitter", "scale", "rotate", "rescue_rounds",
                              "batch_size", "own_term")  # fmt: skip
    assert set(meaning_names()) == {"image_size", "param", "own_term", "jitter", "scale", "rotate"}
    assert MEANING["units"] == meaning_names(OptimSettings)
    assert "blur" in reused_names(Blurred) and "blur" in meaning_names(Blurred)
    assert "precision" not in reused_names(Blurred)  # it depends on the hardware, not the results


def test_the_settings_are_one_class_wherever_they_are_imported_from():
    from repsub.optimize import OptimSettings as exported
    from repsub.optimize.render import OptimSettings as in_render

    assert exported is in_render is OptimSettings


def test_the_declared_choices_are_the_library_implementations():
    """The names are declared without torch; the implementations live with it."""
    from repsub.capture.precision import PRECISIONS
    from repsub.optimize.objectives import OWN_TERMS
    from repsub.optimize.param import PARAMETERIZATIONS
    from repsub.optimize.settings import declared

    choices = {name: declared_as.choices for name, _, declared_as in declared() if declared_as.choices}
    assert choices == {
        "param": tuple(sorted(PARAMETERIZATIONS)),
        "own_term": OWN_TERMS,
        "precision": PRECISIONS,
    }


def test_a_command_extending_a_run_takes_a_declared_setting_from_it():
    config = {"settings": {**Blurred(steps=16, blur=0.5, precision="bf16").to_dict(), "image_size": 32}}
    record = RunRecord("run", {"commands": {"visualize/am": {"config": config, "completed_at": "1"}}})
    taken = settings_for_run(record, {}, reuse=True, image_size=24, settings=Blurred)
    assert (taken.blur, taken.steps, taken.image_size, taken.precision) == (0.5, 16, 24, "auto")
    assert record.taken == ["steps 16, blur 0.5"]
    assert settings_for_run(RunRecord("run", record.manifest), {"blur": 1.0}, True, 24, Blurred).blur == 1.0
    assert "blur" not in record.settings()  # the plain settings know no blur


def test_a_visualize_with_another_value_of_a_meaning_setting_is_refused_as_mixing(tmp_path, capsys):
    out = tmp_path / "run"
    common = {"model": "shallow_cnn", "layers": ["fc6"], "units": "0-3", "out": out, "progress": False}
    repsub.visualize(**common, settings=Blurred(steps=1, image_size=16, batch_size=4))
    manifest = repsub.open_run(out).manifest
    written = manifest["commands"]["visualize/am"]["invocations"][0]["writes"]["units/am"]["meaning"]
    assert written == units_meaning(Blurred(image_size=16)) and written["blur"] == 0.0
    with pytest.raises(RunError, match="blur 0.0; this command's: blur 0.5"):
        repsub.visualize(**{**common, "units": "2-5"}, settings=Blurred(steps=1, image_size=16, blur=0.5))
    # Another value of a setting that does not change the meaning (steps) is no mixing.
    repsub.visualize(**{**common, "units": "2-5"}, settings=Blurred(steps=2, image_size=16))


def test_the_command_line_offers_the_setting_and_passes_it_on():
    parser = build_parser("visualize", settings=Blurred)
    command = ["visualize", "--out", "run", "--method", "am"]
    args = parser.parse_args([*command, "--blur", "0.5", "--steps", "3"])
    assert _given(args, Blurred) == {"steps": 3, "blur": 0.5, "precision": "auto"}
    assert _given(parser.parse_args(command), Blurred) == {"precision": "auto"}  # the others: the run's
    visualize = parser._subparsers._group_actions[0].choices["visualize"]
    assert "blur radius in pixels (default: the run's, else 0.0)" in " ".join(visualize.format_help().split())
    with pytest.raises(SystemExit):  # the plain settings have no such option
        build_parser("visualize").parse_args([*command, "--blur", "0.5"])


def test_the_sweep_config_takes_and_checks_the_setting():
    config = parse_config({**BASE, "optimization": {"blur": 2, "steps": 8}}, settings=Blurred)
    assert (config.optimization.blur, config.optimization.steps) == (2.0, 8)
    assert units_meaning(config.optimization)["blur"] == 2.0
    with pytest.raises(UsageError, match="optimization: --blur must be at most 4.0, got 9.0"):
        parse_config({**BASE, "optimization": {"blur": 9.0}}, settings=Blurred)
    with pytest.raises(UsageError, match="'optimization.blur': expected float"):
        parse_config({**BASE, "optimization": {"blur": "much"}}, settings=Blurred)
    with pytest.raises(UsageError, match="unknown key"):  # the plain settings have no blur
        parse_config({**BASE, "optimization": {"blur": 2}})
