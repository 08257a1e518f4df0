"""What a run lacks compared with its model's catalog: layers, and units per table (selectivity, am, iam)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from repsub.analysis.layers import LayerInfo
from repsub.selection import ranges_text

EXPECTED_METHODS = ("am", "iam")


@dataclass
class Coverage:
    model: str | None
    missing_layers: list[str] = field(default_factory=list)  # catalog layers without any row
    missing_units: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # table -> layer -> units
    notes: list[str] = field(default_factory=list)  # everything above and other remarks, as sentences

    @property
    def complete(self) -> bool:
        return not self.missing_layers and not any(self.missing_units.values())


def check_coverage(
    model: str | None,
    catalog: list[LayerInfo],
    selectivity_units: dict[str, np.ndarray],
    rs_units: dict[tuple[str, str], np.ndarray],
    has_selectivity: bool,
    has_units: bool,
    notes: list[str],
    importance_layers: set[str] = frozenset(),
) -> Coverage:
    """Compare the units present (per layer, and per layer and method) with every unit of the catalog."""
    coverage = Coverage(model=model, notes=list(notes))
    if not has_selectivity:
        coverage.notes.append("the run has no selectivity table")
    if not has_units:
        coverage.notes.append("the run has no units table (no AM/IAM results): selectivity figures only")
    if not catalog:
        if model:
            coverage.notes.append(
                f"model {model!r}: no catalog in the manifest or this repsub: coverage not checked"
            )
        return coverage
    present = set(selectivity_units) | {layer for layer, _ in rs_units} | set(importance_layers)
    coverage.missing_layers = [info.name for info in catalog if info.name not in present]
    if coverage.missing_layers:
        coverage.notes.append(f"layers without any result: {', '.join(coverage.missing_layers)}")
    methods = list(dict.fromkeys([*EXPECTED_METHODS, *(m for _, m in rs_units)]))
    for table in ["selectivity", *methods]:
        missing: dict[str, list[int]] = {}
        for info in catalog:
            have = (
                selectivity_units.get(info.name)
                if table == "selectivity"
                else rs_units.get((info.name, table))
            )
            gone = np.setdiff1d(np.arange(info.n_units or 0), have if have is not None else [])
            if len(gone):
                missing[info.name] = gone.tolist()
        coverage.missing_units[table] = missing
        if missing:
            parts = [f"{name} {ranges_text(units, ', ')}" for name, units in missing.items()]
            coverage.notes.append(f"{table}: missing units: {'; '.join(parts)}")
    return coverage
