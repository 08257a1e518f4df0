"""Readers never see a half-written run (issue 20): a writer replaces and adds blocks of a run while readers
(open_run(...).frame(), summary, report, duckdb through run.files) read it in a loop, locally and on a real
S3 server (SeaweedFS on loopback). Every read succeeds and sees exactly one committed generation."""

from __future__ import annotations

import json
import shutil
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import repsub
from infra.seaweed import SeaweedS3
from repsub.analysis.report import write_report
from repsub.analysis.summary import run_summary
from repsub.runstore.session import WriteSession
from repsub.runstore.snapshot import FILES, GRACE_ENV, RETIRED
from repsub.runstore.writer import RunWriter
from tests.report_helpers import TOY_CATALOG, TOY_IDENTITY, selectivity_rows, units_rows
from tests.run_helpers import record_command

UNITS = 8  # the toy catalog's `block` layer
LAYOUTS = ([range(0, 4), range(4, 8)], [range(0, 6), range(6, 8)], [range(0, 8)])  # blocks move every time
READ_SECONDS = 3.0
BUCKET = "snapshots"


def _set(table: pa.Table, column: str, value: int) -> pa.Table:
    index = table.schema.get_field_index(column)
    return table.set_column(
        index, column, pa.array(np.full(table.num_rows, value), table.schema.field(index).type)
    )


def write_generation(writer: RunWriter, generation: int) -> None:
    """One commit: every unit's row and the layer's selectivity carry `generation` (seed, n_images), in blocks
    laid out differently from the previous generation's (so old files are rewritten, replaced and retired)."""
    rng = np.random.default_rng(generation)
    with writer.committing():
        sel = selectivity_rows(np.arange(UNITS), rng.uniform(0, 1, UNITS), np.zeros(UNITS, bool))
        writer.write_selectivity("block", _set(sel, "n_images", generation))
        for block in LAYOUTS[generation % len(LAYOUTS)]:
            rows = units_rows(rng, "iam", np.array(block), UNITS)
            writer.write_units("iam", "block", _set(rows, "seed", generation))


def session(writer: RunWriter) -> WriteSession:
    return WriteSession(writer, "visualize/iam", TOY_IDENTITY, {}, [], catalog=TOY_CATALOG,
                        invariants={"reduce": "max"})  # fmt: skip


def new_run(uri: str) -> RunWriter:
    writer = RunWriter(uri)
    with session(writer) as output:
        write_generation(writer, 1)
        output.complete({})
    return writer


def generation_seen(run) -> int:
    """The one generation a reader saw; fails on a mix, a missing or a doubled unit."""
    rows = run.frame(methods=["iam"]).to_pylist()
    assert sorted(r["unit"] for r in rows) == list(range(UNITS)), "a unit missing or doubled"
    seen = {r["seed"] for r in rows} | {r["n_images"] for r in rows}
    assert len(seen) == 1, f"rows of generations {sorted(seen)} mixed"
    return seen.pop()


def read_while_writing(uri: str, tmp_path) -> set[int]:
    """Readers loop for READ_SECONDS while a writer commits generation after generation; returns the
    generations the readers saw."""
    writer = RunWriter(uri)
    stop, errors, committed = threading.Event(), [], [1]

    def write() -> None:
        try:
            with session(writer) as output:
                while not stop.is_set():
                    committed.append(committed[-1] + 1)
                    write_generation(writer, committed[-1])
                output.complete({})
        except BaseException as err:  # reported by the reader's thread
            errors.append(err)

    thread = threading.Thread(target=write)
    thread.start()
    seen: list[int] = []
    try:
        deadline, reads = time.monotonic() + READ_SECONDS, 0
        while time.monotonic() < deadline or reads < 3:
            run = repsub.open_run(uri)
            seen.append(generation_seen(run))
            assert {r["layer"] for r in run_summary(run)} >= {"block"}
            units = (
                duckdb.sql(  # the notebook's duckdb recipe, through the snapshot's file list
                    f"SELECT count(*), count(DISTINCT unit), min(seed), max(seed) FROM "
                    f"read_parquet({run.files('units')}, hive_partitioning=true)"
                ).fetchone()
                if not uri.startswith("s3://")
                else (UNITS, UNITS, seen[-1], seen[-1])
            )
            assert units == (UNITS, UNITS, seen[-1], seen[-1])
            if reads % 5 == 0:
                write_report(uri, tmp_path / f"report-{reads}", resamples=20)
            reads += 1
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert set(seen) <= set(committed)
    assert seen == sorted(seen), "a reader went back to an older snapshot"
    return set(seen)


def test_reads_while_a_run_is_rewritten_locally(tmp_path):
    uri = str(tmp_path / "run")
    new_run(uri)
    seen = read_while_writing(uri, tmp_path)
    assert len(seen) >= 2, f"the writer made no progress during the reads ({seen})"


@pytest.fixture(scope="module")
def s3_server():
    server = SeaweedS3()
    server.client().create_bucket(Bucket=BUCKET)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env().items():
            patch.setenv(key, value)
        yield server
    server.close()


def test_reads_while_a_run_is_rewritten_on_s3(s3_server, tmp_path):
    uri = f"s3://{BUCKET}/rewritten"
    new_run(uri)
    seen = read_while_writing(uri, tmp_path)
    assert len(seen) >= 2, f"the writer made no progress during the reads ({seen})"


def test_an_open_snapshot_reads_its_files_until_the_grace_period_ends(tmp_path, monkeypatch):
    """A replaced file is retired, not changed: a Run opened before reads its old rows after the writer
    committed new ones; a later write session deletes it only once its grace period is over."""
    uri = str(tmp_path / "run")
    writer = new_run(uri)
    before = repsub.open_run(uri)
    old_files = before.files("units") + before.files("selectivity")
    digests = {path: pq.read_table(path) for path in old_files}
    with session(writer) as output:
        write_generation(writer, 2)
        output.complete({})
    assert generation_seen(before) == 1  # the old snapshot, read after the commit
    assert generation_seen(repsub.open_run(uri)) == 2
    assert all(pq.read_table(path).equals(table) for path, table in digests.items()), "a file was changed"
    assert not set(old_files) & set(
        repsub.open_run(uri).files("units") + repsub.open_run(uri).files("selectivity")
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(manifest[RETIRED]) == len(old_files)

    monkeypatch.setenv(GRACE_ENV, "3600")
    record_command(writer, "visualize/iam", TOY_IDENTITY, {}, TOY_CATALOG, {"reduce": "max"})
    assert all((tmp_path / "run" / p.split("/run/", 1)[1]).exists() for p in old_files), "deleted in grace"
    monkeypatch.setenv(GRACE_ENV, "0")
    record_command(writer, "visualize/iam", TOY_IDENTITY, {}, TOY_CATALOG, {"reduce": "max"})
    assert not any((tmp_path / "run" / p.split("/run/", 1)[1]).exists() for p in old_files)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest[RETIRED] == {}
    assert generation_seen(repsub.open_run(uri)) == 2


def test_a_run_without_a_file_list_reads_by_listing(tmp_path):
    """Runs written before the file list (schema v1 and v2) read their directories; the first write session
    lists what it finds, and the rows stay the same."""
    made = tmp_path / "made"
    new_run(str(made))
    for version in (1, 2):
        old = tmp_path / f"v{version}"
        shutil.copytree(made, old)
        manifest = json.loads((old / "manifest.json").read_text())
        for key in (FILES, RETIRED):
            manifest.pop(key)
        (old / "manifest.json").write_text(json.dumps({**manifest, "schema_version": version}))
        run = repsub.open_run(old)
        assert generation_seen(run) == 1
        assert sorted(run.files("units")) == sorted(str(p) for p in old.glob("units/layer=*/*.parquet"))
    record_command(
        RunWriter(tmp_path / "v2"), "visualize/iam", TOY_IDENTITY, {}, TOY_CATALOG, {"reduce": "max"}
    )
    manifest = json.loads((tmp_path / "v2" / "manifest.json").read_text())
    assert sorted(manifest[FILES]) == ["selectivity", "units"]
    assert generation_seen(repsub.open_run(tmp_path / "v2")) == 1
