"""Schema v3 (issue 18, step 2): a `basis` column in the key of the selectivity, units and importance tables;
runs of versions 1 and 2 read as the unit basis; a v2 run upgraded in place by its first write; files and
mixing scopes per basis, so that one basis's rows never replace another's, and two fits of one basis name are
never mixed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import repsub
from repsub.errors import RunError
from repsub.runstore.manifest import SCHEMA_VERSION
from repsub.runstore.provenance import (
    Scope,
    basis_layer_meanings,
    basis_meaning,
    mixing_conflicts,
    row_settings,
)
from repsub.runstore.session import WriteSession
from repsub.runstore.tables import file_basis
from repsub.runstore.writer import RunWriter
from tests.report_helpers import IDENTITY, selectivity_rows, units_rows
from tests.run_helpers import record_command


def with_basis(table: pa.Table, basis: str) -> pa.Table:
    return table.append_column("basis", pa.array([basis] * table.num_rows, pa.string()))


def two_basis_run(out):
    """conv1: selectivity and AM rows of the units (64) and of a basis `pca` (5 directions)."""
    rng = np.random.default_rng(0)
    writer = RunWriter(out)
    writer.write_selectivity(
        "conv1", selectivity_rows(np.arange(64), rng.uniform(0, 1, 64), np.zeros(64, bool))
    )
    writer.write_selectivity(
        "conv1", with_basis(selectivity_rows(np.arange(5), np.full(5, 0.25), np.zeros(5, bool)), "pca")
    )
    writer.write_units("am", "conv1", units_rows(rng, "am", np.arange(64), 64))
    writer.write_units("am", "conv1", with_basis(units_rows(rng, "am", np.arange(5), 5), "pca"))
    record_command(writer, "selectivity", IDENTITY, {})
    record_command(writer, "visualize/am", IDENTITY, {})
    return writer


def test_each_basis_has_its_own_files_and_rewriting_one_keeps_the_other(tmp_path):
    writer = two_basis_run(tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run").glob("*/layer=conv1/*.parquet"))
    assert {file_basis(name) for name in names} == {"unit", "pca"}
    assert "selectivity.parquet" in names and "selectivity@pca.parquet" in names
    assert any(name.startswith("am@pca-00000-00004-") for name in names)
    rng = np.random.default_rng(1)
    writer.write_selectivity("conv1", selectivity_rows(np.arange(64), np.full(64, 0.5), np.zeros(64, bool)))
    writer.write_units("am", "conv1", units_rows(rng, "am", np.arange(8), 64))  # replaces units 0-7 only
    run = repsub.open_run(tmp_path / "run")
    units = run.frame(methods=["am"])
    pca = run.frame(methods=["am"], basis="pca")
    assert units.num_rows == 64 and set(units.column("basis").to_pylist()) == {"unit"}
    assert units.column("selectivity").to_pylist() == [0.5] * 64
    assert pca.num_rows == 5 and set(pca.column("basis").to_pylist()) == {"pca"}
    assert pca.column("selectivity").to_pylist() == [0.25] * 5
    stored = pq.read_table(next((tmp_path / "run").glob("units/layer=conv1/am@pca-*.parquet")))
    assert stored.column("basis").to_pylist() == ["pca"] * 5


def strip_to_v2(run_dir):
    """The run as schema version 2 wrote it: no `basis` column, version 2 in the manifest."""
    for path in run_dir.glob("*/layer=*/*.parquet"):
        table = pq.read_table(path)
        if "basis" in table.column_names:
            pq.write_table(table.drop_columns(["basis"]), path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 2}))


def test_a_v2_run_reads_as_units_and_its_first_write_upgrades_it_in_place(tmp_path, capsys):
    rng = np.random.default_rng(2)
    writer = RunWriter(tmp_path / "run")
    writer.write_selectivity(
        "conv1", selectivity_rows(np.arange(64), rng.uniform(0, 1, 64), np.zeros(64, bool))
    )
    writer.write_units("am", "conv1", units_rows(rng, "am", np.arange(64), 64))
    record_command(writer, "visualize/am", IDENTITY, {})
    strip_to_v2(tmp_path / "run")
    before = repsub.open_run(tmp_path / "run").frame()
    assert set(before.column("basis").to_pylist()) == {"unit"} and before.num_rows == 64
    assert repsub.open_run(tmp_path / "run").frame(basis="pca").num_rows == 0
    writer = RunWriter(tmp_path / "run")
    writer.write_units("am", "conv1", units_rows(rng, "am", np.arange(4), 64))  # replaces 4 rows of a v2 file
    record_command(writer, "visualize/am", IDENTITY, {})
    assert "schema version 2 upgraded to 3" in capsys.readouterr().err
    run = repsub.open_run(tmp_path / "run")
    assert run.manifest["schema_version"] == SCHEMA_VERSION == 3
    after = run.frame()
    assert after.num_rows == 64 and set(after.column("basis").to_pylist()) == {"unit"}
    kept = after.filter(pa.compute.greater_equal(after.column("unit"), 4))
    assert (
        kept.column("rs").to_pylist()
        == before.filter(pa.compute.greater_equal(before.column("unit"), 4)).column("rs").to_pylist()
    )


def test_a_v1_run_is_still_refused_for_writing(tmp_path):
    writer = RunWriter(tmp_path / "run")
    record_command(writer, "selectivity", IDENTITY, {})
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    with pytest.raises(RunError, match="schema version 1 .*writes version 3 only"):
        record_command(RunWriter(tmp_path / "run"), "selectivity", IDENTITY, {})


class Fit:
    """A basis as the mixing rule sees it: a name, a kind, K and a content hash."""

    kind, K = "pca", 5

    def __init__(self, name, digest):
        self.name, self.digest = name, digest

    def content_hash(self):
        return self.digest


def test_two_fits_of_one_basis_name_are_never_mixed(tmp_path):
    writer = RunWriter(tmp_path / "run")
    meaning = {"image_size": 32}
    first = Scope("units", "am", {"conv1": "0-4"}, basis_meaning(meaning, Fit("pca", "aaaa")), basis="pca")
    with WriteSession(writer, "visualize/am", IDENTITY, {"n": 1}, [first]) as session:
        session.complete({"n": 1})
    manifest = writer.read_manifest()
    assert row_settings(manifest, "units", "conv1", 2, "visualize/am", "am", basis="pca") == {"n": 1}
    assert row_settings(manifest, "units", "conv1", 2, "visualize/am", "am") is None  # not the units'
    refit = Scope("units", "am", {"conv1": "0-2"}, basis_meaning(meaning, Fit("pca", "bbbb")), basis="pca")
    (conflict,) = mixing_conflicts(manifest, [refit])
    assert "the am rows of basis pca of the units table of conv1 (units 3-4)" in conflict
    assert "content_hash" in conflict and "'aaaa'" in conflict and "'bbbb'" in conflict
    other = Scope("units", "am", {"conv1": "0-2"}, basis_meaning(meaning, Fit("ica", "bbbb")), basis="ica")
    units = Scope("units", "am", {"conv1": "0-2"}, {"image_size": 32})
    assert mixing_conflicts(manifest, [other, units]) == []  # other names: rows of their own
    everything = Scope(
        "units", "am", {"conv1": None}, basis_meaning(meaning, Fit("pca", "bbbb")), basis="pca"
    )
    assert mixing_conflicts(manifest, [everything]) == []  # rewriting every direction is no mixing


def test_a_basis_of_several_layers_has_a_fit_per_layer(tmp_path):
    """A basis name fitted to two layers holds two fits (two content hashes): rows of one layer measured beside the
    other layer's are no mixing, whichever wrote which (a sweep: both layers at once, with per-layer meanings); a
    refit of one layer still is."""
    writer = RunWriter(tmp_path / "run")
    meaning = {"image_size": 32}
    both = Scope("units", "am", {"conv1": "0-4", "fc2": "0-4"}, meaning, basis="pca",
                 layer_meanings=basis_layer_meanings({"conv1": Fit("pca", "aaaa"), "fc2": Fit("pca", "cccc")}))  # fmt: skip
    with WriteSession(writer, "sweep", IDENTITY, {"n": 1}, [both]) as session:
        session.complete({"n": 1})
    manifest = writer.read_manifest()
    assert manifest["commands"]["sweep"]["invocations"][-1]["writes"]["units@pca/am"]["layer_meanings"][
        "fc2"
    ] == {"basis": {"kind": "pca", "K": 5, "content_hash": "cccc"}}
    again = Scope("units", "am", {"fc2": "0-2"}, meaning, basis="pca",
                  layer_meanings=basis_layer_meanings({"fc2": Fit("pca", "cccc")}))  # fmt: skip
    assert mixing_conflicts(manifest, [again]) == []  # conv1's rows stay, of their own fit
    refit = Scope("units", "am", {"fc2": "0-2"}, meaning, basis="pca",
                  layer_meanings=basis_layer_meanings({"fc2": Fit("pca", "dddd")}))  # fmt: skip
    (conflict,) = mixing_conflicts(manifest, [refit])
    assert "of fc2 (units 3-4)" in conflict and "'cccc'" in conflict and "'dddd'" in conflict
    assert basis_layer_meanings({"fc2": None}) is None  # units: nothing per layer
