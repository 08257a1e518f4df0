"""Several bases in one selectivity pass (`--basis unit,pca,random`), and a refitted basis's old rows (issue 18).

The goals: each basis's rows of the one pass equal, bit for bit (fp32), those of a pass of its own; the
exemplars and quantiles stay the units'; rows measured with a fit that `basis fit --replace` replaces are
dropped with it, so no row of the old fit ever sits beside rows of the new one."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

import repsub
from repsub.errors import UsageError
from repsub.runstore.provenance import meaning_at
from tests.cli_helpers import run_cli
from tests.test_directions import SETTINGS, _same

COMPARED = ["unit", "selectivity", "top_class", "class_means", "n_images", "dead", "basis"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder_dir, shallow_random):
    out = tmp_path_factory.mktemp("together") / "run"
    repsub.selectivity(model=shallow_random, data=image_folder_dir, out=out, layers=["conv2", "fc5"],
                       workers=0, progress=False, precision="fp32")  # fmt: skip
    repsub.fit_basis(out, layers=["conv2"], kind="pca", size=8, positions=6, workers=0, seed=0)
    repsub.fit_basis(out, layers=["fc5"], kind="random", size=6, positions=6, workers=0, seed=0)
    return out


def _rows(table, layer: str, basis: str):
    rows = table.filter(pc.and_(pc.equal(table["layer"], layer), pc.equal(table["basis"], basis)))
    return rows.select(COMPARED).sort_by("unit")


def test_one_pass_gives_each_basis_the_rows_of_a_pass_of_its_own(run, tmp_path, image_folder_dir,
                                                                    shallow_random):  # fmt: skip
    common = {"model": shallow_random, "data": image_folder_dir, "workers": 0, "progress": False,
              "precision": "fp32", "exemplars": 3, "quantile_k": 64}  # fmt: skip
    together = repsub.selectivity(**common, out=run, layers=["conv2", "fc5"], basis="unit,pca,random")
    assert sorted(set(zip(together["layer"].to_pylist(), together["basis"].to_pylist(), strict=True))) == [
        ("conv2", "pca"), ("conv2", "unit"), ("fc5", "random"), ("fc5", "unit")
    ]  # fmt: skip
    units_run = tmp_path / "units"
    units = repsub.selectivity(**common, out=units_run, layers=["conv2", "fc5"])
    for layer in ("conv2", "fc5"):
        assert _same(_rows(together, layer, "unit"), _rows(units, layer, "unit")), layer
    for layer, name in (("conv2", "pca"), ("fc5", "random")):
        alone = repsub.selectivity(**common, basis=repsub.load_basis(run, layer, name))
        assert _same(_rows(together, layer, name), _rows(alone, layer, name)), name
    # What the run stores is what the call returned; the exemplars and quantiles are the units' pass's.
    stored = repsub.open_run(run).selectivity.to_table()
    for layer, name in (("conv2", "unit"), ("conv2", "pca"), ("fc5", "random")):
        assert _same(_rows(stored, layer, name), _rows(together, layer, name))
    ours, theirs = (repsub.open_run(r).table("exemplars").drop_columns(["command"]) for r in (run, units_run))
    assert ours.num_rows and _same(ours, theirs)
    # A sketch of k = 64 keeps all 21 values (no compaction, whose coins are unseeded): exact in both runs.
    ours, theirs = (repsub.open_run(r).table("quantiles").drop_columns(["command"]) for r in (run, units_run))
    assert ours.num_rows == 64 + 128 and _same(ours, theirs)
    config = json.loads((run / "manifest.json").read_text())["commands"]["selectivity"]["config"]
    assert config["bases"][0] == "unit" and [b["name"] for b in config["bases"][1:]] == ["pca", "random"]


def test_without_the_units_only_the_bases_layers_are_read(run, image_folder_dir, shallow_random, capsys):
    table = repsub.selectivity(model=shallow_random, data=image_folder_dir, workers=0, progress=False,
                               out=run, basis=["pca", "random"], exemplars=3)  # fmt: skip
    assert set(zip(table["layer"].to_pylist(), table["basis"].to_pylist(), strict=True)) == {
        ("conv2", "pca"), ("fc5", "random")
    }  # fmt: skip
    stored = repsub.open_run(run).table("selectivity")
    code, _ = run_cli(capsys, "selectivity", "--data", image_folder_dir, "--out", run, "--basis", "random,pca",
                      "--workers", "0", "--no-progress")  # fmt: skip
    assert code == 0
    for layer, name in (("conv2", "pca"), ("fc5", "random")):  # the same rows from the command line
        assert _same(
            _rows(repsub.open_run(run).table("selectivity"), layer, name), _rows(stored, layer, name)
        )
    code, out = run_cli(capsys, "visualize", "--out", run, "--method", "am", "--basis", "unit,pca")
    assert code == 2 and "--basis unit,pca: one basis here" in out
    with pytest.raises(UsageError, match="basis 'pca' is given twice"):
        repsub.selectivity(model=shallow_random, data=image_folder_dir, out=run, basis="pca,unit,pca")
    with pytest.raises(UsageError, match="no basis 'nope'.*this run has: unit, pca, random"):
        repsub.selectivity(model=shallow_random, data=image_folder_dir, out=run, basis="unit,nope")
    with pytest.raises(UsageError, match="--save-activations stores the units' activations"):
        repsub.selectivity(model=shallow_random, data=image_folder_dir, out=run, basis="pca",
                           save_activations="conv2")  # fmt: skip


def test_a_refit_drops_the_rows_of_the_fit_it_replaces(tmp_path, image_folder_dir, shallow_random):
    out = tmp_path / "run"
    common = {"model": shallow_random, "out": out, "progress": False}
    repsub.selectivity(**common, data=image_folder_dir, layers=["conv2", "fc5"], workers=0)
    repsub.fit_basis(out, layers=["conv2"], kind="pca", size=4, positions=4, workers=0, seed=0)
    repsub.selectivity(**common, data=image_folder_dir, basis="unit,pca", workers=0)
    repsub.visualize(**common, method="iam", basis="pca", units="0-1", settings=SETTINGS)
    repsub.importance(**common, data=image_folder_dir, basis="pca", units="0-1", workers=0)
    old_hash = repsub.load_basis(out, "conv2", "pca").content_hash()
    run = repsub.open_run(out)
    assert run.frame(basis="pca", methods=["iam"]).num_rows == 2

    repsub.fit_basis(out, layers=["conv2"], kind="pca", size=4, positions=4, workers=0, seed=0)  # same fit
    assert repsub.open_run(out).frame(basis="pca", methods=["iam"]).num_rows == 2  # nothing replaced
    repsub.fit_basis(out, layers=["conv2"], kind="pca", size=3, positions=4, workers=0, seed=0, replace=True)
    new_hash = repsub.load_basis(out, "conv2", "pca").content_hash()
    assert new_hash != old_hash
    run = repsub.open_run(out)
    assert run.table("units") is None and run.table("importance") is None  # pca's were their only rows
    assert set(run.table("selectivity")["basis"].to_pylist()) == {"unit"}  # the units' rows stay
    assert run.frame(basis="unit").num_rows == 64 + 128  # conv2's units, fc5's
    writes = [name for entry in run.manifest["commands"].values() for inv in entry.get("invocations", [])
              for name, scope in inv["writes"].items() if "@pca" in name and scope["layers"]]  # fmt: skip
    assert writes == []  # no invocation claims rows of the old fit any more
    # The new fit is measured as any basis: no refusal about the old one, rows of the new fit only.
    repsub.visualize(**common, method="iam", basis="pca", units="0", settings=SETTINGS)
    meanings = [meaning_at(inv["writes"]["units@pca/iam"], "conv2")["basis"]["content_hash"]
                for inv in repsub.open_run(out).manifest["commands"]["visualize/iam"]["invocations"]
                if "units@pca/iam" in inv["writes"]]  # fmt: skip
    assert meanings == [new_hash]
