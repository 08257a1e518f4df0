"""The documentation agrees with the commands: every command's --help has a description and says each option's
default, the README's Commands block lists every command, and the demo's time is the same in both."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from repsub.cli import COMMANDS, DEMO_TIME, build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)  # `prepare`'s own options are added only when it is the command
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_description_and_says_its_defaults(name):
    parser = command_parser(name)
    assert parser.description and len(parser.description) > 20, name
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{name} {action.option_strings[-1]}: no help"
        if action.required or isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            continue
        assert "default" in action.help or "(required" in action.help, (
            f"{name} {action.option_strings[-1]}: the help does not say its default ({action.default!r})"
        )
    parser.format_help()  # renders: no stray %-format in a help


def commands_block() -> str:
    section = README.split("## Commands", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_lists_every_command():
    listed = set(re.findall(r"^repsub ([a-z]+)", commands_block(), flags=re.MULTILINE))
    assert listed == set(COMMANDS), f"missing: {set(COMMANDS) - listed}; unknown: {listed - set(COMMANDS)}"


def test_the_demo_time_is_the_same_in_the_readme_and_the_help():
    parser = command_parser("demo")
    assert DEMO_TIME in parser.description
    assert re.search(rf"About {re.escape(DEMO_TIME)}", README, flags=re.IGNORECASE), DEMO_TIME
    assert "a few minutes" not in parser.description and "1-2 min" not in README
