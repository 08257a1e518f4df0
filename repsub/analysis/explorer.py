"""The data behind the report page's unit explorer: every units row with its numbers and thumbnail.

Two JSON documents, embedded in the page as `<script type="application/json">` (explorer.js reads them):

- ``EXPLORER_DATA``: columnar arrays. ``units`` (one entry per (layer, unit): selectivity, dead, top class,
  images in the pass, the largest class means; with an importance table, ``imp``: per ablation the accuracy
  drop, loss increase and largest per-class accuracy drops) and ``rows`` (one per units row (layer, method, unit): an
  index into ``units``, RS, rs_ties, activation, status, the exclusion reason, objectives), plus the
  layers, methods, statuses, exclusion reasons, class names and the thumbnail format.
- ``EXPLORER_THUMBS``: one base64 WebP per row ("" where the row has no image).
- the exemplar thumbnails: one base64 WebP per distinct image of the exemplar strips (units ``ex_top`` and
  ``ex_bottom``: positions in it per units entry; repsub.analysis.exemplar_strips), and with the
  interpretability table, units ``interp``: the index per similarity; with the bands table, units ``bands``
  (per unit its bands' images, entropy, top classes with lift and mid-range associations:
  repsub.analysis.bands.band_summaries) and ``band_strip`` (positions of each band's sampled images).

Numbers are rounded to 4 significant digits (what the page shows) to keep the page small.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from repsub.analysis.bands import BAND_STRIP
from repsub.analysis.exclusion import REASONS
from repsub.analysis.exemplar_strips import exemplar_strips
from repsub.analysis.importance import KEYS, MEASURES
from repsub.analysis.interpretability import kind_label
from repsub.analysis.layers import class_names
from repsub.analysis.load import RunData, read_rows
from repsub.core.band_ranges import BAND_NAMES
from repsub.errors import visible
from repsub.runstore.tables import UNIT_STATUSES

TOP_CLASSES = 10  # class means shown in a unit's detail (all of them when the data has this many or fewer)
TOP_CLASS_DROPS = 5  # per-class accuracy drops shown in a unit's detail (the largest)


def _round(values, digits: int = 4) -> list:
    """Floats rounded to `digits` significant digits; NaN and None become null."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            out.append(None)
        else:
            out.append(float(f"{float(v):.{digits}g}"))
    return out


def _codes(values: list, choices: list) -> list[int]:
    """Each value's index in `choices` (-1 for None)."""
    index = {c: i for i, c in enumerate(choices)}
    return [index.get(v, -1) for v in values]


def top_class_means(data: RunData) -> dict[tuple[str, int], tuple[list, float]]:
    """{(layer, unit): ([class, mean, class, mean, ...] of the largest TOP_CLASSES, mean over all classes)}."""
    table, _ = read_rows(
        data.run, "selectivity", ["layer", "unit", "class_means"], ["layer", "unit"], basis=data.basis
    )
    if table is None:
        return {}
    found: dict[tuple[str, int], tuple[list, float]] = {}
    for layer in dict.fromkeys(table.column("layer").to_pylist()):
        part = table.filter(pc.equal(table.column("layer"), layer))
        lists = part.column("class_means").combine_chunks()
        lengths = np.asarray(pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False))
        if not len(lengths) or (lengths != lengths[0]).any() or lengths[0] == 0:
            continue  # ragged or empty class means: nothing sensible to show
        means = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), np.float64).reshape(
            len(lengths), -1
        )
        k = min(TOP_CLASSES, means.shape[1])
        top = np.argsort(-means, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(means, top, axis=1)
        average = means.mean(axis=1)
        for unit, classes, vals, avg in zip(
            part.column("unit").to_pylist(), top, values, average, strict=True
        ):
            pairs = [x for c, v in zip(classes.tolist(), _round(vals.tolist()), strict=True) for x in (c, v)]
            found[(layer, unit)] = (pairs, _round([avg])[0])
    return found


def top_class_drops(data: RunData) -> dict[tuple[str, str, int], list]:
    """{(layer, ablation, unit): [class, drop, class, drop, ...] of the TOP_CLASS_DROPS largest drops}."""
    table, _ = read_rows(data.run, "importance", [*KEYS, "class_accuracy_drop"], KEYS, basis=data.basis)
    found: dict[tuple[str, str, int], list] = {}
    layer, ablation = (np.array(table.column(k).to_pylist(), dtype=object) for k in ("layer", "ablation"))
    for key in dict.fromkeys(zip(layer.tolist(), ablation.tolist(), strict=True)):
        part = table.filter(pa.array((layer == key[0]) & (ablation == key[1])))
        lists = part.column("class_accuracy_drop").combine_chunks()
        lengths = np.asarray(pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False))
        if not len(lengths) or (lengths != lengths[0]).any() or lengths[0] == 0:
            continue  # ragged or empty: nothing sensible to show
        drops = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), np.float64).reshape(
            len(lengths), -1
        )
        k = min(TOP_CLASS_DROPS, drops.shape[1])
        top = np.argsort(-np.nan_to_num(drops, nan=-np.inf), axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(drops, top, axis=1)
        for unit, classes, vals in zip(part.column("unit").to_pylist(), top, values, strict=True):
            found[(*key, unit)] = [
                x for c, v in zip(classes.tolist(), vals.tolist(), strict=True) if np.isfinite(v)
                for x in (c, _round([v])[0])
            ]  # fmt: skip
    return found


def importance_data(
    data: RunData, unit_keys: list[tuple[str, int]], column
) -> tuple[dict, dict] | tuple[None, None]:
    """The explorer's importance: per ablation, per units entry, the accuracy drop, loss increase and largest
    class drops; and the measurement per ablation and layer (baseline accuracy, images). None without."""
    importance = data.importance
    if importance is None:
        return None, None
    drops = top_class_drops(data)
    per_unit = {
        ablation: {
            "drop": _round(column(f"importance_{ablation}")),
            "loss": _round(column(f"loss_increase_{ablation}")),
            "classes": [drops.get((layer, ablation, unit), []) for layer, unit in unit_keys],
        }
        for ablation in importance.ablations
    }
    layers = [info.name for info in data.layers]
    measured = {
        ablation: {
            str(layers.index(layer)): {
                "baseline": _round([float(np.mean(rows.baseline_accuracy))])[0],
                "images": int(rows.n_images.max()),
            }
            for (layer, abl), rows in importance.rows.items()
            if abl == ablation and len(rows.indices)
        }
        for ablation in importance.ablations
    }
    return per_unit, {"ablations": importance.ablations, "measured": measured, "measures": MEASURES}


def interpretability_data(data: RunData, unit_keys: list[tuple[str, int]]) -> dict | None:
    """{kind label: [the unit's index per units entry]} (None without the interpretability table)."""
    index = data.interpretability
    if index is None:
        return None
    found = {}
    for similarity, variant in index.kinds:
        values: list = []
        for layer, unit in unit_keys:
            values += index.lookup(layer, similarity, variant, [unit])
        found[kind_label(similarity, variant)] = _round(values)
    return found


def explorer_data(
    data: RunData,
    thumbs: dict,
    thumb_side: int,
    image_side: int | None,
    strips: bool = True,
    bands: dict | None = None,
) -> tuple[str, str, str]:
    """The three JSON documents (module doc): the explorer's data, its thumbnails and the exemplar thumbnails
    (`strips` False: none); `bands`: the run's band summaries (repsub.analysis.bands.band_summaries), None
    without."""  # fmt: skip
    return tuple(map(_script_json, explorer_document(data, thumbs, thumb_side, image_side, strips, bands)))


def bases_explorer_data(
    datas: dict[str, RunData], thumbs: dict[str, dict], thumb_side: int, image_side: int | None,
    bands: dict | None = None,
) -> tuple[str, str, str]:  # fmt: skip
    """`explorer_data` of the units (the first of `datas`) and of every basis's directions together: their
    rows side by side, each units entry with its basis (``units.basis``: an index into ``bases``), for the
    page's basis filter. The exemplar strips, the bands and the interpretability index are the units' (null
    for directions); each basis's numbers come from its own rows only."""
    parts = [
        explorer_document(
            data,
            thumbs[basis],
            thumb_side,
            image_side,
            strips=index == 0,
            bands=bands if index == 0 else None,
        )
        for index, (basis, data) in enumerate(datas.items())
    ]
    merged, thumb_list, exemplar_thumbs = parts[0]
    merged = {
        **merged,
        "units": {k: list(v) if isinstance(v, list) else v for k, v in merged["units"].items()},
    }
    merged["rows"] = {key: list(values) for key, values in merged["rows"].items()}
    merged["bases"] = list(datas)
    merged["units"]["basis"] = [0] * len(merged["units"]["unit"])
    thumb_list = list(thumb_list)
    for code, (document, thumbs_of_basis, _) in enumerate(parts[1:], start=1):
        _append(merged, document, code)
        thumb_list += thumbs_of_basis
    return _script_json(merged), _script_json(thumb_list), _script_json(exemplar_thumbs)


def _append(merged: dict, document: dict, code: int) -> None:
    """Add a basis's explorer document to `merged` (in place): its layers and methods mapped onto merged's
    (new ones appended), its units entries and rows after merged's."""
    layer_code = []
    for layer in document["layers"]:
        names = [known["name"] for known in merged["layers"]]
        if layer["name"] not in names:
            merged["layers"].append(layer)
            names.append(layer["name"])
        layer_code.append(names.index(layer["name"]))
    method_code = []
    for method in document["methods"]:
        if method not in merged["methods"]:
            merged["methods"].append(method)
        method_code.append(merged["methods"].index(method))
    units, ours = merged["units"], document["units"]
    before, added = len(units["unit"]), len(ours["unit"])
    for key, values in ours.items():
        if isinstance(values, list) and key in units and isinstance(units[key], list):
            units[key] += [layer_code[v] for v in values] if key == "layer" else values
    for key in ("ex_top", "ex_bottom", "band_strip"):  # the units' exemplars and bands: directions have none
        if key in units:
            units[key] += [[] for _ in range(added)]
    if "bands" in units:
        units["bands"] += [None] * added
    units["basis"] += [code] * added
    units["interp"] = _extended(units.get("interp"), None, before, added)
    units["imp"] = _merged_importance(units.get("imp"), ours.get("imp"), before, added)
    if document.get("importance"):
        found = merged.get("importance") or {"ablations": [], "measured": {},
                                             "measures": document["importance"]["measures"]}  # fmt: skip
        for ablation in document["importance"]["ablations"]:
            if ablation not in found["ablations"]:
                found["ablations"].append(ablation)
            measured = found["measured"].setdefault(ablation, {})
            for layer, values in document["importance"]["measured"].get(ablation, {}).items():
                measured.setdefault(str(layer_code[int(layer)]), values)
        merged["importance"] = found
    rows = merged["rows"]
    for key, values in document["rows"].items():
        if key == "unit":
            values = [before + v for v in values]
        elif key == "method":
            values = [method_code[v] if v >= 0 else v for v in values]
        rows[key] += values


def _extended(by_kind: dict | None, filler, before: int, added: int) -> dict | None:
    """{kind: values per units entry} with `added` entries of `filler` (None stays None)."""
    if by_kind is None:
        return None
    return {kind: [*values, *([filler] * added)] for kind, values in by_kind.items()}


def _merged_importance(ours: dict | None, theirs: dict | None, before: int, added: int) -> dict | None:
    """The units entries' importance per ablation, `theirs` (a basis's) after `ours`; null where a side has
    none of that ablation."""
    if ours is None and theirs is None:
        return None
    ours, theirs = ours or {}, theirs or {}
    empty = {"drop": None, "loss": None, "classes": []}
    merged = {}
    for ablation in dict.fromkeys([*ours, *theirs]):
        first, second = ours.get(ablation), theirs.get(ablation)
        merged[ablation] = {
            key: [*(first[key] if first else [empty[key]] * before),
                  *(second[key] if second else [empty[key]] * added)]
            for key in ("drop", "loss", "classes")
        }  # fmt: skip
    return merged


def explorer_document(
    data: RunData, thumbs: dict, thumb_side: int, image_side: int | None, strips: bool = True,
    bands: dict | None = None,
) -> tuple[dict, list, list]:  # fmt: skip
    """The explorer's data, its thumbnails and the exemplar thumbnails, as Python values (`explorer_data`)."""
    frame = data.frame
    layers = [info.name for info in data.layers]
    layer_col = frame.column("layer").to_pylist()
    unit_col = frame.column("unit").to_pylist()
    method_col = frame.column("method").to_pylist()
    means = top_class_means(data)

    first_row: dict[tuple[str, int], int] = {}  # the frame row that carries each unit's selectivity columns
    for i, key in enumerate(zip(layer_col, unit_col, strict=True)):
        first_row.setdefault(key, i)
    unit_index = {key: position for position, key in enumerate(first_row)}
    take = pa.array(list(first_row.values()), pa.int64())

    def column(name: str) -> list:
        return frame.column(name).take(take).to_pylist()

    unit_keys = list(unit_index)
    units = {
        "layer": _codes([layer for layer, _ in unit_keys], layers),
        "unit": [unit for _, unit in unit_keys],
        "sel": _round(column("selectivity")),
        "dead": [None if d is None else int(d) for d in column("dead")],
        "top": column("top_class"),
        "images": column("n_images"),
        "means": [means.get(key, ([], None))[0] for key in unit_keys],
        "mean_all": [means.get(key, ([], None))[1] for key in unit_keys],
    }
    units["imp"], importance = importance_data(data, unit_keys, column)
    units["interp"] = interpretability_data(data, unit_keys)
    samples = None if bands is None else {key: summary["sample"] for key, summary in bands.items()}
    exemplars, exemplar_thumbs = exemplar_strips(data.run, unit_keys, samples) if strips else (None, [])
    if exemplars is not None and "top" in exemplars:
        units["ex_top"], units["ex_bottom"] = exemplars.pop("top"), exemplars.pop("bottom")
    if exemplars is not None and "bands" in exemplars:
        units["band_strip"] = exemplars.pop("bands")
    if bands is not None:
        units["bands"] = [_without_sample(bands.get(key)) for key in unit_keys]
    with_method = [i for i, m in enumerate(method_col) if m is not None]
    take = pa.array(with_method, pa.int64())

    def row_column(name: str) -> list:
        return frame.column(name).take(take).to_pylist()

    statuses = list(UNIT_STATUSES)
    reasons = list(REASONS)
    row_keys = [(layer_col[i], method_col[i], unit_col[i]) for i in with_method]
    rows = {
        "unit": [unit_index[(layer, unit)] for layer, _, unit in row_keys],
        "method": _codes([m for _, m, _ in row_keys], data.methods),
        "rs": _round(row_column("rs")),
        "ties": _round(row_column("rs_ties")),
        "act": _round(row_column("activation")),
        "status": _codes(row_column("status"), statuses),
        "excluded": _codes(row_column("excluded"), reasons),
        "obj0": _round(row_column("objective_start")),
        "obj1": _round(row_column("objective_final")),
    }
    document = {
        "layers": [
            {
                "name": visible(i.name),
                "depth": i.depth,
                "read": i.read,
                "signed": i.signed,
                "units": i.n_units,
            }
            for i in data.layers
        ],
        "methods": data.methods,
        "statuses": UNIT_STATUSES,
        "reasons": REASONS,
        "classes": _visible_names(class_names(data.run.manifest)),
        "importance": importance,  # null for a run without importance
        "exemplars": exemplars,  # {side, per_side}; null for a run without exemplars or bands
        "band_names": None if bands is None else list(BAND_NAMES),
        "band_strip": BAND_STRIP,
        "thumb": {"side": thumb_side, "format": "webp", "image_side": image_side},
        "units": units,
        "rows": rows,
    }
    thumb_list = [thumbs.get(key, "") for key in row_keys]
    return document, thumb_list, exemplar_thumbs


def _without_sample(summary: dict | None) -> dict | None:
    """A unit's band summary as the page holds it: its sample is in `band_strip`, as thumbnail positions."""
    return None if summary is None else {k: v for k, v in summary.items() if k != "sample"}


def _visible_names(names: list[str] | None) -> list[str] | None:
    """Names as the page shows them: invisible characters (a right-to-left override) escaped, not obeyed."""
    return None if names is None else [visible(name) for name in names]


def _script_json(value) -> str:
    """JSON safe inside a <script> element: no '<', so neither '</script' nor '<!--' can occur."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
