"""The bases of a run side by side (issue 18): per layer, the units and each basis's directions, each read on
its own (repsub.analysis.load.load_run_data(run, basis)): the rows of one basis never mix with another's.

One line per layer and basis present (the unit basis first, then the bases by name), layers in depth order:

- ``targets``, ``dead``, ``mean_selectivity``: the basis's selectivity rows of the layer (as `stats`: alive,
  finite selectivity);
- per method m: ``n_m``, ``mean_rs_m``, ``rho_m`` (Spearman rho of RS against selectivity), the numbers of
  the statistics table (repsub.analysis.stats) for that basis;
- per ablation a: ``drop_a``: the mean accuracy drop with one target ablated, over the targets with a finite
  one;
- for a fitted basis, its metrics (the `bases` table: repsub basis fit): ``kind``, ``fve``, ``l0`` (mean
  active directions), ``dead_dirs`` (directions never active on the held-out vectors), ``stability``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from repsub.analysis.layers import LayerInfo
from repsub.analysis.load import RunData, load_run_data
from repsub.analysis.options import StatsOptions
from repsub.analysis.stats import compute_stats
from repsub.runstore.tables import UNIT_BASIS, file_basis

MEASURED = ("selectivity", "units", "importance")  # the tables whose rows carry a basis
METRICS = {"kind": "kind", "fve": "fve", "l0": "mean_l0", "dead_dirs": "dead", "stability": "stability"}
LEGEND = (
    "bases side by side: one line per layer and basis (unit: the units); targets: units or directions; "
    "drop_<ablation>: mean accuracy drop with one target ablated; fve, l0, dead_dirs, stability: the basis's "
    "metrics on held-out vectors (repsub basis list)"
)


def run_bases(run) -> list[str]:
    """The bases whose targets have rows in the run (from its file names, nothing read): unit first, then the
    others by name. Runs of schema versions 1 and 2 have the unit basis only."""
    found = {file_basis(path.rsplit("/", 1)[-1]) for table in MEASURED for path in run.files(table)}
    return sorted(found, key=lambda basis: (basis != UNIT_BASIS, basis))


def basis_data(run, unit_data: RunData | None = None) -> dict[str, RunData]:
    """{basis: its RunData} for the unit basis (`unit_data` where already read) and every other basis present."""
    datas = {UNIT_BASIS: unit_data if unit_data is not None else load_run_data(run)}
    for basis in run_bases(run):
        if basis != UNIT_BASIS:
            datas[basis] = load_run_data(run, basis)
    return datas


def bases_stats(datas: dict[str, RunData], options: StatsOptions) -> pa.Table:
    """The statistics rows of every basis (repsub.analysis.stats, its `basis` column telling them apart)."""
    return pa.concat_tables([compute_stats(data, options) for data in datas.values()])


def side_by_side_rows(stats: pa.Table, datas: dict[str, RunData]) -> list[dict]:
    """The lines (module doc) from the statistics of every basis (`bases_stats`) and their data."""
    metrics = _basis_metrics(next(iter(datas.values())).run)
    by_key: dict[tuple[str, str], dict] = {}
    depth: dict[str, float] = {}
    for row in stats.to_pylist():
        key = (row["layer"], row["basis"])
        depth[row["layer"]] = row["depth"] if row["depth"] is not None else math.inf
        line = by_key.setdefault(key, {
            "layer": row["layer"], "basis": row["basis"], "targets": row["units"], "dead": row["dead"],
            "mean_selectivity": row["mean_selectivity"],
        })  # fmt: skip
        if row["method"] is not None:
            line[f"n_{row['method']}"] = row["n_included"]
            line[f"mean_rs_{row['method']}"] = row["mean_rs"]
            line[f"rho_{row['method']}"] = row["spearman_rho"]
    for (layer, basis), line in by_key.items():
        importance = datas[basis].importance
        for ablation in importance.ablations if importance is not None else []:
            rows = importance.rows.get((layer, ablation))
            if rows is not None:
                drops = rows.accuracy_drop[np.isfinite(rows.accuracy_drop)]
                line[f"drop_{ablation}"] = float(drops.mean()) if drops.size else math.nan
        line.update(metrics.get((layer, basis), {}))
    order = list(datas)  # unit first, then the bases by name
    keys = sorted(by_key, key=lambda key: (depth[key[0]], list(depth).index(key[0]), order.index(key[1])))
    return [by_key[key] for key in keys]


def _basis_metrics(run) -> dict[tuple[str, str], dict]:
    """{(layer, basis name): its metrics} from the run's `bases` table (none without one)."""
    dataset = getattr(run, "bases", None)
    if dataset is None:
        return {}
    table = dataset.to_table(columns=["layer", "name", *METRICS.values()])
    return {
        (row["layer"], row["name"]): {shown: row[column] for shown, column in METRICS.items()}
        for row in table.to_pylist()
    }


def has_bases(datas: dict[str, RunData]) -> bool:
    """Whether there is anything to put side by side: a basis beside the units."""
    return any(basis != UNIT_BASIS for basis in datas)


@dataclass(frozen=True)
class ExplorerBases:
    """What the explorer's filters offer beside the units' own: the bases, the layers of every basis (the
    units' first, in their order, so that the statistics table's layer links keep their index) and the
    ablations."""

    names: list[str]
    layers: list[LayerInfo]
    ablations: list[str]


def explorer_bases(datas: dict[str, RunData]) -> ExplorerBases | None:
    """The explorer's choices for the bases of `datas` (None for a run of units only)."""
    if not has_bases(datas):
        return None
    layers: list[LayerInfo] = []
    ablations: list[str] = []
    for data in datas.values():
        layers += [info for info in data.layers if info.name not in {known.name for known in layers}]
        if data.importance is not None:
            ablations += [a for a in data.importance.ablations if a not in ablations]
    return ExplorerBases(list(datas), layers, ablations)
