"""`repsub interpretability RUN` / `repsub.interpretability(RUN)`: the simulated 2AFC index of every unit with
exemplars (repsub.core.interpretability), from the run's `exemplars` table and, for `pixels`, its thumbnails.

Writes the `interpretability` table (one block per layer and similarity): rows derived from the run's own
exemplars, so the command re-creates no data pass; the run's model is re-created only to check the run's
identity, as every writer does (repsub.commands.context).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm.auto import tqdm

from repsub.analysis.run import open_run
from repsub.commands.context import CommandContext
from repsub.core.interpretability import (
    DEFAULT_REFERENCES,
    DEFAULT_TEMPERATURE,
    DEFAULT_TRIALS,
    SIMILARITIES,
    two_afc_index,
    unit_rng,
)
from repsub.errors import RunError, UsageError
from repsub.runstore.provenance import Scope
from repsub.runstore.tables import with_layer
from repsub.validate import check_int, check_seed


def interpretability(
    run: str | os.PathLike,
    similarity: str = "labels",
    layers: list[str] | None = None,
    trials: int = DEFAULT_TRIALS,
    references: int = DEFAULT_REFERENCES,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    progress: bool = True,
    allow_mixed: bool = False,
    force_unlock: bool = False,
) -> pa.Table:
    """The index of every unit of `layers` (default: every layer with exemplars) under `similarity`
    (labels: same class; pixels: negative L2 of the thumbnails), written into the run and returned."""
    if similarity not in SIMILARITIES:
        raise UsageError(f"--similarity {similarity!r}; valid similarities: {', '.join(SIMILARITIES)}")
    check_int(trials, "--trials", 1)
    check_int(references, "--references", 1)
    check_seed(seed)
    if not temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    opened = open_run(run)
    if opened.exemplar_rows is None:
        raise RunError(f"{opened.uri} has no exemplars: run `repsub selectivity --exemplars K` into it first")
    rows = opened.exemplar_rows.to_table(columns=["layer", "unit", "side", "rank", "image_index", "label"])
    present = sorted(set(rows.column("layer").to_pylist()))
    chosen = layers or present
    missing = [name for name in chosen if name not in present]
    if missing:
        raise UsageError(
            f"--layers {','.join(missing)}: no exemplars; layers with exemplars: {', '.join(present)}"
        )
    pixels = _thumbnails(opened) if similarity == "pixels" else None
    ctx = CommandContext.of_run(
        "interpretability", run
    )  # the index needs the stored exemplars, not the model
    config = {"similarity": similarity, "layers": chosen, "trials": trials, "references": references,
              "temperature": temperature, "seed": seed, "variant": "extremal"}  # fmt: skip
    meaning = {"trials": trials, "references": references, "temperature": temperature}
    scope = Scope("interpretability", similarity, dict.fromkeys(chosen), meaning)
    tables = {}
    with ctx.writing(
        f"interpretability/{similarity}", config, [scope], allow_mixed=allow_mixed, force_unlock=force_unlock
    ) as output:
        for layer in chosen:
            part = rows.filter(pc.equal(rows.column("layer"), layer))
            tables[layer] = _layer_rows(part, layer, similarity, pixels, trials, references, temperature, seed,
                                        progress)  # fmt: skip
            output.write("interpretability", layer, tables[layer])
        output.complete(config)
    return with_layer(tables)


def _layer_rows(rows, layer, similarity, pixels, trials, references, temperature, seed, progress) -> pa.Table:
    order = np.lexsort((rows.column("rank").to_numpy(), rows.column("side").to_numpy(zero_copy_only=False),
                        rows.column("unit").to_numpy()))  # fmt: skip
    rows = rows.take(pa.array(order))
    units = rows.column("unit").to_numpy()
    top = rows.column("side").to_numpy(zero_copy_only=False) == "top"
    items = rows.column("label").to_numpy() if pixels is None else _images(pixels, rows.column("image_index"))
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    ends = np.r_[starts[1:], len(units)]
    indices = []
    for start, end in tqdm(list(zip(starts, ends, strict=True)), desc=f"interpretability {layer}",
                           unit="unit", disable=not progress):  # fmt: skip
        unit_items, unit_top = items[start:end], top[start:end]
        rng = unit_rng(seed, layer, int(units[start]))
        indices.append(two_afc_index(unit_items[unit_top], unit_items[~unit_top], SIMILARITIES[similarity], rng,
                                     trials, references, temperature))  # fmt: skip
    count = len(starts)
    return pa.table({
        "unit": pa.array(units[starts], pa.int32()),
        "similarity": pa.array([similarity] * count, pa.string()),
        "variant": pa.array(["extremal"] * count, pa.string()),
        "index": pa.array(indices, pa.float64()),
        "trials": pa.array(np.full(count, trials), pa.int32()),
        "seed": pa.array(np.full(count, seed), pa.int64()),
    })  # fmt: skip


def _thumbnails(run) -> dict[int, np.ndarray]:
    if run.images is None:
        raise RunError(f"{run.uri} has no exemplar thumbnails (images table): --similarity pixels needs them")
    table = run.images.to_table(columns=["image_index", "image"])
    return {
        int(index): np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255
        for index, data in zip(
            table.column("image_index").to_pylist(), table.column("image").to_pylist(), strict=True
        )  # fmt: skip
    }


def _images(pixels: dict[int, np.ndarray], indices) -> np.ndarray:
    wanted = indices.to_pylist()
    absent = sorted({i for i in wanted if i not in pixels})
    if absent:
        raise RunError(f"the run has no thumbnails of images {absent[:10]} that its exemplars refer to")
    return np.stack([pixels[i] for i in wanted])
