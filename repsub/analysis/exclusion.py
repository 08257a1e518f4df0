"""Which units enter the RS statistics, and why the others are left out.

A unit's RS row enters the mean and median RS, Spearman rho and its bootstrap only if the unit is alive
on the data, its optimization drove it (status `ok`), and both its selectivity and RS are finite numbers.
A failed unit's RS is an artefact of its start image (a unit never driven gets the share of the layer
active on the noise it started from, or 0, the best score, in a silent layer), and a dead unit has no
selectivity: either would bend every statistic it entered.

Each left-out row gets exactly one reason, the first that applies in the order of REASONS, so the
counts add up: units_rs = n_included + sum of the excluded_<reason> counts.
"""

from __future__ import annotations

import numpy as np

from repsub.errors import RunError
from repsub.runstore.tables import UNIT_STATUSES

STATUS_REASONS = [s for s in UNIT_STATUSES if s != "ok"]  # a status other than ok is its own reason
REASONS = {
    "dead": "dead on the data: every class mean is zero, so selectivity is undefined",
    **{status: UNIT_STATUSES[status] for status in STATUS_REASONS},  # no_response, nonfinite
    "no_selectivity": "no selectivity row for the unit (not measured, so not known to be alive)",
    "nan_selectivity": "selectivity NaN although the unit is not dead",
}


def exclusion_reasons(
    has_selectivity: np.ndarray,
    dead: np.ndarray,
    selectivity: np.ndarray,
    status: np.ndarray,
    rs: np.ndarray,
) -> np.ndarray:
    """Per units row, the reason it is left out of the RS statistics (a key of REASONS), or None.

    Arrays are aligned per row; `dead` and `selectivity` are ignored where `has_selectivity` is False.
    """
    status = np.asarray(status, dtype=object)
    unknown = sorted(set(status.tolist()) - set(UNIT_STATUSES))
    if unknown:
        raise RunError(f"unknown unit status(es) {unknown}; known: {', '.join(UNIT_STATUSES)}")
    has_selectivity = np.asarray(has_selectivity, dtype=bool)
    reason = np.full(len(status), None, dtype=object)
    rules = [
        ("dead", has_selectivity & np.asarray(dead, dtype=bool)),
        *((name, status == name) for name in STATUS_REASONS),
        ("nonfinite", ~np.isfinite(np.asarray(rs, dtype=np.float64))),  # status ok, RS not a number
        ("no_selectivity", ~has_selectivity),
        ("nan_selectivity", ~np.isfinite(np.asarray(selectivity, dtype=np.float64))),
    ]
    for name, applies in rules:
        reason[(reason == None) & applies] = name  # noqa: E711 (elementwise on an object array)
    return reason


# Importance by ablation against RS or selectivity (repsub.analysis.importance_stats): the base is the
# importance rows of a (layer, ablation); a unit's RS enters as it enters the RS statistics above (its
# `excluded` reason, computed by exclusion_reasons), its selectivity when it is alive and finite.
IMPORTANCE_REASONS = {
    "dead": REASONS["dead"],
    "no_rs": "no units row of the method for the unit (no RS to correlate)",
    "no_response": REASONS["no_response"],
    "nonfinite": REASONS["nonfinite"],
    "no_selectivity": REASONS["no_selectivity"],
    "nan_selectivity": REASONS["nan_selectivity"],
    "nan_importance": "the unit's accuracy drop or loss increase is not a finite number",
}


def importance_reasons(
    importance: np.ndarray,
    has_selectivity: np.ndarray,
    dead: np.ndarray,
    selectivity: np.ndarray,
    rs_reason: np.ndarray | None = None,
    has_rs: np.ndarray | None = None,
    nan_reason: str = "nan_importance",
) -> np.ndarray:
    """Per importance row, why it is left out of a Spearman rho of importance (a key of IMPORTANCE_REASONS),
    or None. Against selectivity: `rs_reason` and `has_rs` None. Against RS: `has_rs` whether the unit has a
    units row of the method, `rs_reason` that row's exclusion reason (exclusion_reasons; None if included).
    The first rule in the order of IMPORTANCE_REASONS that applies wins, so the counts add up. `nan_reason`
    names the last rule (a value that is not finite): another per-unit measure correlated the same way
    (the interpretability index: INTERPRETABILITY_REASONS) names it its own way."""
    has_selectivity = np.asarray(has_selectivity, dtype=bool)
    rules = [("dead", has_selectivity & np.asarray(dead, dtype=bool))]
    if has_rs is not None:
        rs_reason = np.asarray(rs_reason, dtype=object)
        rules.append(("no_rs", ~np.asarray(has_rs, dtype=bool)))
        # no_response, nonfinite: the units row's own reason (nonfinite also covers an RS that is not finite)
        rules += [(name, rs_reason == name) for name in STATUS_REASONS]
    rules += [
        ("no_selectivity", ~has_selectivity),
        ("nan_selectivity", ~np.isfinite(np.asarray(selectivity, dtype=np.float64))),
        (nan_reason, ~np.isfinite(np.asarray(importance, dtype=np.float64))),
    ]
    reason = np.full(len(has_selectivity), None, dtype=object)
    for name, applies in rules:
        reason[(reason == None) & applies] = name  # noqa: E711 (elementwise on an object array)
    return reason


# The interpretability index (repsub.analysis.interpretability_stats) against RS or selectivity: the same
# rules as importance, the base being the index rows of a (layer, similarity, variant).
INTERPRETABILITY_REASONS = {
    **{name: text for name, text in IMPORTANCE_REASONS.items() if name != "nan_importance"},
    "nan_index": "the unit's interpretability index is not a finite number",
}
