"""The first sweep a newcomer tries, as the README gives it: `repsub sweep --config jobs/configs/demo.yaml`,
offline, on a fresh cache, with a local Ray the command starts itself (58 s, half of it Ray's start, on 2
cores at a load of 7)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import repsub

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "jobs/configs/demo.yaml"


def sweep(entry: list[str], cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    # --address local: a Ray of its own (without it, a Ray another process runs on this machine is joined).
    env = {**os.environ, "REPSUB_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", *entry, "--config", str(CONFIG), "--address", "local", "--no-progress", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    """`repsub sweep` of the shipped demo config from an empty directory: its relative `out` lands there."""
    here = tmp_path_factory.mktemp("newcomer")
    result = sweep(["repsub.cli", "sweep"], here, here / "cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return here, result


def test_the_demo_config_runs_as_the_readme_gives_it(first_sweep):
    here, result = first_sweep
    run = repsub.open_run(here / "runs" / "demo-sweep")  # the config's relative `out`, from the current dir
    units = run.units.to_table(columns=["layer", "method", "unit"])
    assert units.num_rows == 2 * (16 * 5 + 10)  # units 0-15 of each layer (fc6 has 10), am and iam
    selectivity = run.selectivity.to_table(columns=["layer", "n_images"])
    assert selectivity.num_rows == 64 + 64 + 128 + 128 + 128 + 10
    val = here / "cache" / "demo-data" / "val"  # `data: demo`, generated on first use in $REPSUB_CACHE
    images = sum(1 for _ in val.rglob("*.png"))
    assert images == 300 and set(selectivity["n_images"].to_pylist()) == {images}
    assert run.manifest["commands"]["sweep"]["config"]["selectivity"]["data"] == "demo"
    importance = run.importance.to_table(columns=["layer", "unit", "n_images", "ablation"])
    pairs = sorted(zip(importance["layer"].to_pylist(), importance["unit"].to_pylist(), strict=True))
    assert pairs == sorted(set(zip(units["layer"].to_pylist(), units["unit"].to_pylist(), strict=True)))
    assert set(importance["n_images"].to_pylist()) == {100}
    assert set(importance["ablation"].to_pylist()) == {"zero"}
    assert "sweep written to runs/demo-sweep" in result.stdout and "mean_selectivity" in result.stdout


def test_jobs_sweep_takes_the_same_flags(first_sweep):
    from jobs.sweep import build_parser as job_parser
    from repsub.cli import build_parser

    def options(parser) -> dict:
        return {
            a.option_strings[-1]: a.help for a in parser._actions if a.option_strings and a.dest != "help"
        }

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["sweep"]
    ours, job = options(sub), options(job_parser())
    assert (
        set(ours) == set(job) >= {"--config", "--out", "--address", "--prepare-demo-data", "--force-unlock"}
    )
    assert {k: v for k, v in ours.items() if k != "--address"} == {
        k: v for k, v in job.items() if k != "--address"
    }
    assert "default auto" in job["--address"]

    # The job entry point on the same config and run: every shard is done, nothing to compute; the summary.
    here, _ = first_sweep
    result = sweep(["jobs.sweep"], here, here / "cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "21 already done" in result.stdout and "sweep written to runs/demo-sweep" in result.stdout


def test_prepare_demo_data_writes_the_held_out_images_at_a_missing_path(tmp_path, monkeypatch):
    from repsub.data.synthetic import cached_demo_data
    from repsub.sweep.command import prepare_demo_data

    monkeypatch.setenv("REPSUB_CACHE", str(tmp_path / "cache"))
    prepare_demo_data(str(tmp_path / "data" / "val"))
    _, val = cached_demo_data(tmp_path / "cache")
    written = sorted(
        p.relative_to(tmp_path / "data" / "val") for p in (tmp_path / "data" / "val").rglob("*.png")
    )
    assert written == sorted(p.relative_to(val) for p in val.rglob("*.png")) and len(written) == 300
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["val"]  # no staging copy left


def test_demo_data_is_generated_once_and_the_same_everywhere(tmp_path):
    from repsub.data.synthetic import cached_demo_data

    train_a, val_a = cached_demo_data(tmp_path / "a", train_per_class=2, val_per_class=2, size=12)
    _, val_b = cached_demo_data(tmp_path / "b", train_per_class=2, val_per_class=2, size=12)
    files = sorted(p.relative_to(val_a) for p in val_a.rglob("*.png"))
    assert len(files) == 20 and files == sorted(p.relative_to(val_b) for p in val_b.rglob("*.png"))
    assert all((val_a / f).read_bytes() == (val_b / f).read_bytes() for f in files)  # another machine's copy
    stamp = (tmp_path / "a" / "demo-data" / "complete.json").stat().st_mtime_ns
    cached_demo_data(tmp_path / "a", train_per_class=2, val_per_class=2, size=12)
    assert (tmp_path / "a" / "demo-data" / "complete.json").stat().st_mtime_ns == stamp  # not made again
    cached_demo_data(tmp_path / "a", train_per_class=3, val_per_class=2, size=12)  # other arguments: replaced
    assert len(list(train_a.rglob("*.png"))) == 30
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no staging left


def test_data_demo_names_the_generated_images(tmp_path, monkeypatch):
    from repsub.data.sources import open_source

    monkeypatch.setenv("REPSUB_CACHE", str(tmp_path / "cache"))
    source = open_source("demo", 16, (0.5,) * 3, (0.5,) * 3)
    assert len(source) == 300 and len(source.classes) == 10
    assert Path(source.describe()["path"]) == tmp_path / "cache" / "demo-data" / "val"
