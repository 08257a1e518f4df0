"""`repsub interpretability RUN` / `repsub.interpretability(RUN)`: the simulated 2AFC index of every unit
(repsub.core.interpretability), from the run's stored tables.

- variant `extremal`: the unit's top vs bottom exemplars (the `exemplars` table); `central`: a sample of its
  50-75% band vs one of its 25-50% band (the `bands` table); `both`.
- similarity `labels` (the images' classes), `pixels` (the thumbnails), `features` (cosine of the thumbnails'
  mean-pooled activations in --feature-layer of the run's model, or of --feature-model with --feature-weights)
  or `lpips` (repsub.capture.perceptual). Per-image items are computed once, for every image of every trial.

Writes the `interpretability` table, one block per layer and similarity holding the rows of its variants: a
block replaces the similarity's stored rows of the layer, so a command computing one variant carries the
other's stored rows over (when they were made with the same settings; else it asks for --variant both).
No data pass is re-created; a model is loaded only for `features` (the run's is verified by its hash).
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm.auto import tqdm

from repsub.analysis.run import Run, open_run
from repsub.capture.precision import default_device
from repsub.capture.resources import check_device
from repsub.commands.context import CommandContext
from repsub.commands.extend import load_for_run
from repsub.core.interpretability import (
    CENTRAL_BANDS,
    DEFAULT_REFERENCES,
    DEFAULT_TEMPERATURE,
    DEFAULT_TRIALS,
    SIMILARITIES,
    VARIANTS,
    central_index,
    two_afc_index,
    unit_rng,
)
from repsub.errors import RunError, UsageError
from repsub.runstore.provenance import Scope, row_settings
from repsub.runstore.tables import with_layer
from repsub.validate import check_int, check_seed

VARIANT_CHOICES = (*VARIANTS, "both")
CHUNK = 4096  # images decoded at a time for a model's items


@dataclass
class Trials:
    """The images of one unit's two sides in one variant: top/high first, bottom/low second."""

    unit: int
    first: np.ndarray  # image indices
    second: np.ndarray


def interpretability(
    run: str | os.PathLike,
    similarity: str = "labels",
    layers: list[str] | None = None,
    variant: str = "extremal",
    feature_layer: str | None = None,
    feature_model: str | None = None,
    feature_weights: str | None = None,
    lpips_net: str = "alex",
    lpips_weights: str = "imagenet",
    trials: int = DEFAULT_TRIALS,
    references: int = DEFAULT_REFERENCES,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    allow_mixed: bool = False,
    force_unlock: bool = False,
) -> pa.Table:
    """The index of every unit of `layers` (default: every layer with what the variants need) under
    `similarity`, in `variant` (extremal, central or both), written into the run and returned."""
    if similarity not in SIMILARITIES:
        raise UsageError(f"--similarity {similarity!r}; valid similarities: {', '.join(SIMILARITIES)}")
    if variant not in VARIANT_CHOICES:
        raise UsageError(f"--variant {variant!r}; valid variants: {', '.join(VARIANT_CHOICES)}")
    if (feature_model is not None or feature_weights is not None) and similarity != "features":
        raise UsageError("--feature-model and --feature-weights are options of --similarity features")
    check_int(trials, "--trials", 1)
    check_int(references, "--references", 1)
    check_int(batch_size, "--batch-size", 1)
    check_seed(seed)
    if not temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    device = check_device(device) if device not in (None, "auto") else default_device()
    variants = VARIANTS if variant == "both" else (variant,)
    opened = open_run(run)
    if "extremal" in variants and opened.exemplar_rows is None:
        raise RunError(f"{opened.uri} has no exemplars: run `repsub selectivity --exemplars K` into it first")
    if "central" in variants and opened.band_rows is None:
        raise RunError(f"{opened.uri} has no bands table (the central variant's images): run `repsub selectivity` "
                       "with --bands first")  # fmt: skip
    sides = {name: _SIDES[name](opened) for name in variants}  # variant -> layer -> [Trials]
    present = sorted(set.intersection(*(set(by_layer) for by_layer in sides.values())))
    chosen = layers or present
    missing = [name for name in chosen if name not in present]
    if missing:
        raise UsageError(f"--layers {','.join(missing)}: not in the run's {' and '.join(_NEEDS[v] for v in variants)}; "
                         f"its layers with them: {', '.join(present) or 'none'}")  # fmt: skip
    _check_exemplars(sides.get("extremal"), chosen, references)
    ctx = CommandContext.of_run("interpretability", run)  # the run's identity: writes need no model of it
    items, settings = _items(opened, ctx, similarity, sides, chosen, feature_layer, feature_model, feature_weights,
                             lpips_net, lpips_weights, batch_size, device, progress)  # fmt: skip
    meaning = {"trials": trials, "references": references, "temperature": temperature, **settings}
    config = {"similarity": similarity, "layers": chosen, "variant": variant, "seed": seed, **meaning}
    carried = {
        layer: _carried(opened, layer, similarity, variants, {**meaning, "seed": seed}) for layer in chosen
    }
    scope = Scope("interpretability", similarity, dict.fromkeys(chosen), meaning)
    tables = {}
    with ctx.writing(
        f"interpretability/{similarity}", config, [scope], allow_mixed=allow_mixed, force_unlock=force_unlock
    ) as output:
        for layer in chosen:
            parts = [_variant_rows(name, layer, sides[name][layer], items, similarity, trials, references,
                                   temperature, seed, progress) for name in variants]  # fmt: skip
            tables[layer] = pa.concat_tables(parts)
            output.write("interpretability", layer, _with_carried(tables[layer], carried[layer], output))
        kept = sorted({v for t in carried.values() if t is not None for v in t.column("variant").to_pylist()})
        output.complete({**config, **({"kept_variants": kept} if kept else {})})
    return with_layer(tables)


def _with_carried(new: pa.Table, stored: pa.Table | None, output) -> pa.Table:
    """The block to write: the new rows (of this command) and the other variant's stored rows carried over."""
    if stored is None:
        return new
    command = output.writer.command if output.writer is not None else None
    new = new.append_column("command", pa.array([command] * new.num_rows, pa.string()))
    return pa.concat_tables([stored.select(new.column_names).cast(new.schema), new])


# ---------------------------------------------------------------- the two sides of each variant


def _extremal_sides(run: Run) -> dict[str, list[Trials]]:
    if run.exemplar_rows is None:
        return {}
    rows = run.exemplar_rows.to_table(columns=["layer", "unit", "side", "rank", "image_index"])
    out = {}
    for layer in sorted(set(rows.column("layer").to_pylist())):
        part = rows.filter(pc.equal(rows.column("layer"), layer))
        order = np.lexsort((part.column("rank").to_numpy(), part.column("unit").to_numpy()))
        units = part.column("unit").to_numpy()[order]
        top = part.column("side").to_numpy(zero_copy_only=False)[order] == "top"
        index = part.column("image_index").to_numpy()[order]
        starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
        ends = np.r_[starts[1:], len(units)]
        out[layer] = [Trials(int(units[a]), index[a:b][top[a:b]], index[a:b][~top[a:b]])
                      for a, b in zip(starts, ends, strict=True)]  # fmt: skip
    return out


def _central_sides(run: Run) -> dict[str, list[Trials]]:
    bands = run.band_rows
    if bands is None:
        return {}
    units = pc.field("basis").is_null() | (pc.field("basis") == "unit")  # the units' bands (v3 rows carry it)
    rows = bands.to_table(columns=["layer", "unit", "name", "sample"],
                          filter=units & pc.field("name").isin(list(CENTRAL_BANDS)))  # fmt: skip
    low_name, high_name = CENTRAL_BANDS
    names = set(bands.to_table(columns=["name"]).column("name").unique().to_pylist())
    absent = [name for name in CENTRAL_BANDS if name not in names]
    if absent:
        raise RunError(f"{run.uri}: its bands table has no {' and no '.join(absent)} band (its bands: "
                       f"{', '.join(sorted(map(str, names)))}); the central variant compares the 25-50% and 50-75% bands")  # fmt: skip
    out = {}
    for layer in sorted(set(rows.column("layer").to_pylist())):
        part = rows.filter(pc.equal(rows.column("layer"), layer)).to_pylist()
        samples = {(row["unit"], row["name"]): np.asarray(row["sample"] or [], np.int64) for row in part}
        out[layer] = [Trials(unit, samples.get((unit, high_name), np.zeros(0, np.int64)),
                             samples.get((unit, low_name), np.zeros(0, np.int64)))
                      for unit in sorted({row["unit"] for row in part})]  # fmt: skip
    return out


def _check_exemplars(by_layer: dict[str, list[Trials]] | None, layers: list[str], references: int) -> None:
    """Every unit has a query and `references` exemplars per side: refused before anything is written."""
    for layer in layers if by_layer is not None else []:
        for unit in by_layer[layer]:
            fewest = min(len(unit.first), len(unit.second))
            if fewest < references + 1:
                raise RunError(f"{layer} unit {unit.unit} has {fewest} exemplars on a side; {references} references "
                               f"and a query need {references + 1}: run `repsub selectivity --exemplars "
                               f"{references + 1}` or more into the run")  # fmt: skip


_SIDES = {"extremal": _extremal_sides, "central": _central_sides}
_NEEDS = {"extremal": "exemplars (repsub selectivity --exemplars K)", "central": "bands"}


# ---------------------------------------------------------------- the items: one per image


def _items(run, ctx, similarity, sides, layers, feature_layer, feature_model, feature_weights, lpips_net,
           lpips_weights, batch_size, device, progress):  # fmt: skip
    """(image index -> item lookup, the similarity's settings for the manifest). Model items are computed in
    chunks of CHUNK images, decoded as they go: a run's thumbnails are not all held as float arrays at once."""
    needed = np.unique(np.concatenate([np.concatenate([t.first, t.second]) for by_layer in sides.values()
                                       for layer in layers for t in by_layer[layer]] or [np.zeros(0, np.int64)]))  # fmt: skip
    if similarity == "labels":
        return _lookup(needed, _labels(run, needed)), {}
    if similarity == "pixels":
        return _lookup(needed, _decode(_encoded(run, needed, similarity), needed)), {}
    if similarity == "features":  # the model first: a bad layer is refused before the images are read
        from repsub.capture.image_features import layer_features

        model, size, settings = _feature_model(ctx, feature_model, feature_weights, feature_layer, device)
        layer = model.layer(feature_layer)

        def compute(images):
            return layer_features(model, layer, images, size, batch_size, device)
    else:
        from repsub.capture.perceptual import LpipsEmbedder

        embedder = LpipsEmbedder(lpips_net, lpips_weights, device)
        settings = {"lpips_net": lpips_net, "lpips_weights": lpips_weights}

        def compute(images):
            return embedder.embed(images, batch_size)

    encoded = _encoded(run, needed, similarity)
    parts = []
    with tqdm(
        total=len(needed), desc=f"{similarity} of the images", unit="image", disable=not progress
    ) as bar:
        for start in range(0, len(needed), CHUNK):
            chunk = needed[start : start + CHUNK]
            parts.append(compute(_decode(encoded, chunk)))
            bar.update(len(chunk))
    return _lookup(needed, np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)), settings


def _feature_model(ctx, name, weights, layer, device):
    """(the features' model, the side its images are resized to, its settings for the manifest): the run's
    model re-created (weights verified by hash), else `name` with `weights`."""
    if name is None:
        if weights is not None:
            raise UsageError(
                "--feature-weights goes with --feature-model (without it the run's model is used)"
            )
        size = ctx.record.image_size("selectivity")
        model, _seed, _same = load_for_run(ctx.record, None, None, None, device, run_size=size)
        size = size or model.image_size
    else:
        from repsub.models import load_model

        model = load_model(name, weights or "random", seed=0, device=device)
        size = model.image_size
    if layer is None:
        raise UsageError(f"--similarity features needs --feature-layer LAYER; layers of {model.name}: "
                         f"{', '.join(item.name for item in model.layers)}")  # fmt: skip
    model.select([layer])  # an unknown layer: refused naming the valid ones
    identity = model.identity()
    settings = {"feature_model": identity["model"], "feature_weights": identity["weights"],
                "feature_weights_sha256": identity["weights_sha256"], "feature_layer": layer,
                "feature_image_size": size}  # fmt: skip
    return model, size, settings


def _lookup(needed: np.ndarray, values: np.ndarray):
    """The items of image indices (any shape of array) from the items of `needed` (sorted), in its order."""

    def items(indices: np.ndarray) -> np.ndarray:
        return values[np.searchsorted(needed, indices)]

    return items


def _labels(run: Run, needed: np.ndarray) -> np.ndarray:
    """The class label of each needed image: from the exemplars' rows and the thumbnails' table."""
    known: dict[int, int] = {}
    for dataset in (run.images, run.exemplar_rows):
        if dataset is not None:
            table = dataset.to_table(columns=["image_index", "label"])
            known.update(
                zip(table.column("image_index").to_pylist(), table.column("label").to_pylist(), strict=True)
            )
    absent = [int(i) for i in needed if int(i) not in known]
    if absent:
        raise RunError(f"{run.uri} records no label of images {absent[:10]} that its trials draw")
    return np.asarray([known[int(i)] for i in needed], np.int64)


def _encoded(run: Run, needed: np.ndarray, similarity: str) -> dict[int, bytes]:
    """The needed images' stored thumbnails (JPEG bytes), every one of them present."""
    if run.images is None:
        raise RunError(f"{run.uri} has no thumbnails (images table): --similarity {similarity} needs them")
    table = run.images.to_table(columns=["image_index", "image"], filter=pc.field("image_index").isin(needed))
    stored = dict(
        zip(table.column("image_index").to_pylist(), table.column("image").to_pylist(), strict=True)
    )
    absent = [int(i) for i in needed if int(i) not in stored]
    if absent:
        raise RunError(f"the run has no thumbnails of images {absent[:10]} that its trials draw")
    return stored


def _decode(encoded: dict[int, bytes], indices: np.ndarray) -> np.ndarray:
    """[n, H, W, 3] float32 in [0, 1]."""
    if not len(indices):
        return np.zeros((0, 1, 1, 3), np.float32)
    return np.stack([np.asarray(Image.open(io.BytesIO(encoded[int(i)])).convert("RGB"), dtype=np.float32) / 255
                     for i in indices])  # fmt: skip


# ---------------------------------------------------------------- the index


def _variant_rows(variant, layer, units: list[Trials], items, similarity, trials, references, temperature, seed,
                  progress) -> pa.Table:  # fmt: skip
    index, short = [], 0
    for unit in tqdm(units, desc=f"interpretability {variant} {layer}", unit="unit", disable=not progress):
        rng = unit_rng(seed, layer, unit.unit, variant)
        first, second = items(unit.first), items(unit.second)
        if variant == "central":
            if min(len(first), len(second)) < references + 1:  # a unit constant over most images: no band
                index.append(float("nan"))
                short += 1
                continue
            value = central_index(
                second, first, SIMILARITIES[similarity], rng, trials, references, temperature
            )
        else:
            value = two_afc_index(
                first, second, SIMILARITIES[similarity], rng, trials, references, temperature
            )
        index.append(value)
    if short:
        print(f"note: {layer}: {short} unit(s) with fewer than {references + 1} sampled images in a central band: "
              "central index NaN", file=sys.stderr)  # fmt: skip
    count = len(units)
    return pa.table({
        "unit": pa.array([unit.unit for unit in units], pa.int32()),
        "similarity": pa.array([similarity] * count, pa.string()),
        "variant": pa.array([variant] * count, pa.string()),
        "index": pa.array(index, pa.float64()),
        "trials": pa.array(np.full(count, trials), pa.int32()),
        "seed": pa.array(np.full(count, seed), pa.int64()),
    })  # fmt: skip


def _carried(run: Run, layer: str, similarity: str, variants, settings: dict) -> pa.Table | None:
    """The stored rows of the layer's other variants under `similarity`, to write again beside the new ones;
    refused when they were made with other settings (they would then mean something else than the config
    this command records for them)."""
    if run.interpretability is None or len(variants) == len(VARIANTS):
        return None
    stored = run.interpretability.to_table(
        filter=(pc.field("layer") == layer) & (pc.field("similarity") == similarity)
        & ~pc.field("variant").isin(list(variants))
    )  # fmt: skip
    if stored.num_rows == 0:
        return None
    for unit, command in set(
        zip(stored.column("unit").to_pylist(), stored.column("command").to_pylist(), strict=True)
    ):
        config = row_settings(run.manifest, "interpretability", layer, unit, command, key=similarity) or {}
        differ = sorted(key for key, value in settings.items() if config.get(key) != value)
        if differ:
            other = ", ".join(sorted(set(stored.column("variant").to_pylist())))
            raise RunError(
                f"{run.uri}: {layer} holds the {other} {similarity} index made with other settings "
                f"({', '.join(f'{key} {config.get(key)!r}' for key in differ)}; this command's: "
                f"{', '.join(f'{key} {settings[key]!r}' for key in differ)}), which writing one variant would "
                "keep beside it: compute the variants together (--variant both) or with the same settings"
            )
    return stored.drop_columns(["layer"])
