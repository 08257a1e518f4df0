"""The README's samples run as written (issue 12): every ```python block, and every ```bash block, in the
environment the README's set-up makes (the repository's .venv, `repsub` on the PATH), in a folder where
`runs/demo` exists (the demo at tiny settings) and the demo's data is cached.

A block that cannot run here (it needs S3 credentials, a cluster, or it is the set-up itself) is preceded by
`<!-- not run: REASON -->`; the test honours the marker, counts the blocks it skips and checks that every
marker has a reason and stands right before a block. Blocks without a language are synopses (placeholders
such as RUN), not samples. The quick commands the README names (`repsub --help`, `repsub layers ...`,
`repsub summary`, `repsub report`) run too, through the installed `.venv/bin/repsub`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)
MARKER = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
RUN_LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
TIMEOUT = 600  # seconds per block; the slowest (a first run of the CLI) takes well under a minute here


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the marker's reason


def readme_blocks(text: str) -> tuple[list[Block], list[int]]:
    """The fenced blocks, with the `not run` marker that stands right before each (blank lines allowed between),
    and the lines of markers that stand before no block."""
    lines = text.splitlines()
    blocks, stray, pending, i = [], [], None, 0
    while i < len(lines):
        marker, fence = MARKER.match(lines[i]), FENCE.match(lines[i])
        if marker:
            if pending is not None:
                stray.append(pending[0])
            pending = (i + 1, marker["reason"])
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            reason = pending[1] if pending else None
            blocks.append(Block(i + 1, fence["lang"], "\n".join(lines[i + 1 : end]) + "\n", reason))
            pending, i = None, end
        elif lines[i].strip() and pending is not None:
            stray.append(pending[0])
            pending = None
        i += 1
    if pending is not None:
        stray.append(pending[0])
    return blocks, stray


BLOCKS, STRAY = readme_blocks(README.read_text(encoding="utf-8"))
SAMPLES = [b for b in BLOCKS if b.lang in RUN_LANGUAGES]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A folder with runs/demo (the demo with 1 epoch and 2 steps) and the demo's data in its cache."""
    from repsub.commands.demo import run_demo

    root = tmp_path_factory.mktemp("readme")
    cache = root / ".cache"
    run_demo(out=str(root / "runs" / "demo"), cache=str(cache), steps=2, epochs=1, progress=False)
    return root


def environment(workdir: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["REPSUB_CACHE"] = str(workdir / ".cache")
    env["MPLBACKEND"] = "Agg"
    return env


def run(command: list[str], workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=workdir, env=environment(workdir), capture_output=True, text=True, timeout=TIMEOUT
    )


def test_markers_have_reasons_and_blocks():
    assert not STRAY, f"README.md: `not run` markers before no code block, lines {STRAY}"
    skipped = [b for b in SAMPLES if b.not_run is not None]
    assert all(b.not_run for b in skipped), "a `not run` marker needs its reason"
    ran = [b for b in SAMPLES if b.not_run is None]
    assert sum(b.lang == "python" for b in ran) >= 4  # the test is not vacuous
    # Said once, so that a reader of the test output sees what the README does not prove.
    print(f"README: {len(ran)} samples run, {len(skipped)} not run: " + "; ".join(
        f"line {b.line} ({b.not_run})" for b in skipped))  # fmt: skip


@pytest.mark.parametrize(
    "block", [b for b in SAMPLES if b.not_run is None], ids=lambda b: f"line{b.line}-{b.lang}"
)
def test_sample_runs_as_written(block, workdir):
    if RUN_LANGUAGES[block.lang] == "python":
        done = run([str(PYTHON), "-c", block.code], workdir)
    else:
        done = run(["bash", "-e", "-o", "pipefail", "-c", block.code], workdir)
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.lang}) failed with status {done.returncode}:\n{block.code}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-5000:]}"
    )


@pytest.mark.parametrize(
    "command, expected",
    [
        ("repsub --help", "usage: repsub"),
        ("repsub layers --list-models", "vgg16"),
        ("repsub layers --model vgg16", "conv5_3"),
        ("repsub layers --model shallow_cnn --modules", "conv1"),
        ("repsub summary runs/demo", "left_out_am"),
        ("repsub report runs/demo", "report.html"),
    ],
)
def test_quick_commands(command, expected, workdir):
    """The commands the README names that run offline in seconds, through the installed `repsub`."""
    assert (VENV_BIN / "repsub").exists(), "the set-up's .venv/bin/repsub is missing"
    done = run(["bash", "-e", "-c", command], workdir)
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    assert expected in done.stdout
