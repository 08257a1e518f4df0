"""The command line starts without heavy imports (issue 12): building the parser and printing any command's help
import no torch, ray or pyarrow; `import repsub` neither, while its API names still resolve. Checked in fresh
interpreters through sys.modules (what was imported), not by timing (docs/performance.md has the times)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "ray", "pyarrow", "scipy", "matplotlib", "pandas")
COMMANDS = [
    "layers",
    "selectivity",
    "visualize",
    "train",
    "importance",
    "interpretability",
    "basis",
    "sweep",
    "summary",
    "report",
    "demo",
]


def imported_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; returns {"heavy": the HEAVY modules it imported, "out": what the code
    put in the variable `out`}."""
    script = f"""
import json, sys
out = None
{code}
print(json.dumps({{"heavy": sorted(m for m in {HEAVY!r} if m in sys.modules), "out": out}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_nothing_heavy():
    found = imported_after("""
import repsub.cli
parser = repsub.cli.build_parser()
out = sorted(parser._subparsers._group_actions[0].choices)
""")
    assert found["heavy"] == []
    assert set(found["out"]) == {*COMMANDS, "prepare"}


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in COMMANDS), ["basis", "fit", "--help"]],
                         ids=lambda a: " ".join(a))  # fmt: skip
def test_help_imports_nothing_heavy(argv):
    found = imported_after(f"""
import contextlib, io
from repsub.cli import main
text = io.StringIO()
with contextlib.redirect_stdout(text):
    try:
        main({argv!r})
    except SystemExit as done:
        code = done.code
out = [code, text.getvalue()]
""")
    code, text = found["out"]
    assert code == 0 and text.startswith("usage: repsub")
    assert found["heavy"] == [], f"repsub {' '.join(argv)} imported {found['heavy']}"


def test_import_repsub_is_light_and_its_api_resolves():
    found = imported_after("""
import repsub
before = sorted(m for m in ("torch", "pyarrow") if m in sys.modules)
names = {name: getattr(repsub, name).__module__ for name in repsub.__all__ if name != "__version__"}
import repsub.commands.selectivity  # the module of the same name lives in repsub.commands: no collision
from repsub.core.selectivity import selectivity_index
out = [before, names, callable(repsub.selectivity), repsub.selectivity.__module__, selectivity_index.__module__,
       repsub.importance.__module__]
""")
    before, names, callable_, selectivity_module, index_module, importance_module = found["out"]
    assert before == []  # nothing heavy until an API name is used
    assert names == {
        "Run": "repsub.analysis.run", "open_run": "repsub.analysis.run",
        "selectivity": "repsub.commands.selectivity", "visualize": "repsub.commands.visualize",
        "importance": "repsub.commands.importance", "catalog": "repsub.models.loading",
        "interpretability": "repsub.commands.interpretability",
        "load_model": "repsub.models.loading", "fit_basis": "repsub.commands.basis",
        "list_bases": "repsub.commands.basis", "load_basis": "repsub.commands.basis",
    }  # fmt: skip
    assert callable_ and selectivity_module == "repsub.commands.selectivity"
    assert index_module == "repsub.core.selectivity"
    assert importance_module == "repsub.commands.importance"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import repsub

        repsub.nothing  # noqa: B018


def test_the_cli_copies_of_the_library_choices_agree():
    """The parser's choices are copies (so that the help needs no torch): equal to the library's. (The
    optimization settings' options come from their declaration: tests/test_settings.py.)"""
    from repsub import cli
    from repsub.capture.precision import PRECISIONS
    from repsub.capture.reader import REDUCTIONS
    from repsub.optimize import METHODS

    assert (tuple(REDUCTIONS), tuple(PRECISIONS)) == (cli.REDUCTIONS, cli.PRECISIONS)
    assert set(cli.METHODS) == set(METHODS)
    from repsub.core.bases.fit import KINDS
    from repsub.core.bases.kinds import FITTED_KINDS

    assert tuple(kind for kind in KINDS if kind != "unit") == FITTED_KINDS


def test_prepare_keeps_its_options(capsys):
    """`prepare` is listed without importing its module, and gets its real options when it is the command."""
    from repsub.cli import build_parser, main
    from repsub.data.prepare import add_prepare_parser

    with pytest.raises(SystemExit) as done:
        main(["prepare", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--max-resolution" in text and "--write-mode" in text
    listed = build_parser()._subparsers._group_actions[0]
    help_line = next(a.help for a in listed._choices_actions if a.dest == "prepare")
    import argparse

    real = argparse.ArgumentParser().add_subparsers()
    add_prepare_parser(real)
    assert help_line == next(a.help for a in real._choices_actions if a.dest == "prepare")


@pytest.mark.parametrize("argv", [["layers", "--model", "vgg16"], ["layers", "--list-models", "--json"]])
def test_layers_answers_from_the_shipped_index_without_torch(argv):
    found = imported_after(f"""
import contextlib, io
from repsub.cli import main
text = io.StringIO()
with contextlib.redirect_stdout(text):
    code = main({argv!r})
out = [code, text.getvalue()]
""")
    code, text = found["out"]
    assert code == 0 and found["heavy"] == [], f"repsub {' '.join(argv)} imported {found['heavy']}"
    assert ("conv5_3" in text and "fc8" in text) if "--model" in argv else '"resnet18"' in text


def test_a_reader_that_went_away_ends_the_listing_quietly(tmp_path):
    """`repsub layers --model vgg16 | head -1`: the pipe's reader is gone before the listing is written;
    no traceback, exit 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(tmp_path / "stderr", "w") as stderr:
        code = subprocess.run(
            [sys.executable, "-m", "repsub.cli", "layers", "--model", "vgg16"],
            stdout=write_end,
            stderr=stderr,
            timeout=120,
        ).returncode
    os.close(write_end)
    assert (code, (tmp_path / "stderr").read_text()) == (0, "")
