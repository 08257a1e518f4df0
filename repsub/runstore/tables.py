"""The tables of a run: each one a schema, a file-naming rule and a builder, in one registry.

    RUN/selectivity/layer=<layer>/selectivity.parquet                      one file per layer
    RUN/units/layer=<layer>/<method>-<first>-<last>-<hash>.parquet         blocks of units, per method
    RUN/importance/layer=<layer>/<ablation>-<first>-<last>-<hash>.parquet  blocks of units, per ablation
    RUN/activations/layer=<layer>/activations.parquet                      selectivity --save-activations
    RUN/exemplars/layer=<layer>/exemplars.parquet                          selectivity --exemplars K
    RUN/images/images.parquet                                              the exemplars' thumbnails
    RUN/interpretability/layer=<layer>/<similarity>-<first>-<last>-<hash>.parquet   repsub interpretability
    RUN/bases/layer=<layer>/<name>.parquet                                 one basis (repsub.runstore.bases)
    RUN/quantiles/layer=<layer>/quantiles.parquet                          selectivity --quantile-k K
    RUN/bands/layer=<layer>/bands.parquet                                  selectivity --bands (the band pass)

Every table but `images` is hive-partitioned by `layer` (`images` is one file: an image that several
layers' exemplars refer to is stored once; its `layer` column reads null). A block table keys its rows by (its `key` column, unit): a
block's file name follows from the key and the units, so rewriting the same units replaces the same file
(repsub.runstore.writer.RunWriter.write_block), and a sweep's shards write deterministic names.

Every row of the selectivity, units and importance tables names the manifest command that wrote it
(`command`), whose settings the manifest keeps (repsub.runstore.provenance.row_settings), and the basis of its
target (`basis`: "unit" for units; null in runs of schema versions 1 and 2, read as "unit"). A basis other than
"unit" has files of its own, named `<key>@<basis>-...` (`selectivity@<basis>.parquet`), so that writing one
basis never replaces another's rows.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

if TYPE_CHECKING:
    import torch

LAYER_PARTITION = pa.schema([("layer", pa.string())])
UNIT_BASIS = "unit"  # the identity basis: a target per unit (repsub.core.readout.UNIT)


def file_key(key: str, basis: str) -> str:
    """The stem of a basis's files: `key` (a method, an ablation, a table name) for units, `key@basis` else."""
    return key if basis == UNIT_BASIS else f"{key}@{basis}"


def file_basis(base_name: str) -> str:
    """The basis a table file holds, from its name (file_key): "unit" where the stem names none."""
    stem = base_name.split("-", 1)[0].removesuffix(".parquet")
    return stem.split("@", 1)[1] if "@" in stem else UNIT_BASIS


def scope_name(table: str, key: str | None, basis: str = UNIT_BASIS) -> str:
    """The name under which the manifest records what one command wrote into a table (a method's, an
    ablation's, a basis's rows): `units/am`, `selectivity`, `units@pca/am`, `selectivity@pca`."""
    table = table if basis == UNIT_BASIS else f"{table}@{basis}"
    return table if key is None else f"{table}/{key}"


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    key: str | None = None  # the column that, with `unit`, keys a block's rows; None: one file per layer
    row_group: int | None = None  # rows per row group (None: pyarrow's default)

    def full_schema(self) -> pa.Schema:
        """The schema as readers see it: the stored columns plus the `layer` partition column."""
        return self.schema.insert(0, pa.field("layer", pa.string()))

    @property
    def has_basis(self) -> bool:
        return "basis" in self.schema.names

    def conform(self, table: pa.Table) -> pa.Table:
        return table.select(self.schema.names).cast(self.schema)

    def block_name(self, key: str, units: list[int]) -> str:
        """The file of a block of units: deterministic in (key, units)."""
        digest = uuid.uuid5(uuid.NAMESPACE_OID, ",".join(map(str, sorted(units)))).hex[:8]
        return f"{key}-{min(units):05d}-{max(units):05d}-{digest}.parquet"


BASIS_FIELD = ("basis", pa.string())  # the target's basis: "unit", or a basis's name (null in v1/v2 runs)

SELECTIVITY = TableSpec("selectivity", pa.schema([
    BASIS_FIELD,
    ("unit", pa.int32()),
    ("selectivity", pa.float64()),
    ("top_class", pa.int32()),
    ("class_means", pa.list_(pa.float64())),
    ("n_images", pa.int64()),
    ("dead", pa.bool_()),
    ("command", pa.string()),  # the manifest command that wrote the row (null in version 1 runs)
]))  # fmt: skip

UNITS = TableSpec(
    "units",
    pa.schema(
        [
            ("method", pa.string()),
            BASIS_FIELD,
            ("unit", pa.int32()),
            ("activation", pa.float32()),  # the unit's own activation on its stored image
            ("layer_activations", pa.list_(pa.float32())),
            ("rs", pa.float64()),
            ("rs_ties", pa.float64()),  # fraction of the other units whose activation equals the unit's
            ("status", pa.string()),  # a key of UNIT_STATUSES
            ("objective_start", pa.float32()),  # the method's objective on the start image (no transforms)
            ("objective_final", pa.float32()),  # ... and on the stored 8-bit image
            ("image", pa.binary()),
            ("seed", pa.int64()),
            ("steps", pa.int32()),
            ("command", pa.string()),  # the manifest command that wrote the row (null in version 1 runs)
        ]
    ),
    key="method",
    row_group=256,
)  # fmt: skip  (256 rows: a few MB with images, readable a group at a time)

IMPORTANCE = TableSpec("importance", pa.schema([
    BASIS_FIELD,
    ("unit", pa.int32()),
    ("n_images", pa.int64()),
    ("baseline_accuracy", pa.float64()),  # the intact network's accuracy on the images
    ("accuracy_drop", pa.float64()),  # baseline accuracy minus the accuracy with the unit ablated
    ("loss_increase", pa.float64()),  # mean cross-entropy with the unit ablated minus the intact one
    ("class_accuracy_drop", pa.list_(pa.float64())),  # per class (NaN for a class without images)
    ("ablation", pa.string()),  # repsub.ablation.ABLATIONS
    ("command", pa.string()),  # the manifest command that wrote the row
]), key="ablation")  # fmt: skip

# One row per image per layer, streamed during the selectivity pass (repsub.runstore.activations).
ACTIVATIONS = TableSpec("activations", pa.schema([
    ("image_index", pa.int64()),
    ("label", pa.int32()),
    ("activations", pa.list_(pa.float32())),
]))  # fmt: skip

# Per unit, the k images of the data with the highest (side "top") and lowest ("bottom") activation, best
# first (rank 0), ties by the lower image index (repsub.core.exemplars); written by the selectivity pass.
EXEMPLARS = TableSpec("exemplars", pa.schema([
    ("unit", pa.int32()),
    ("side", pa.string()),  # top | bottom
    ("rank", pa.int32()),  # 0: the most extreme
    ("image_index", pa.int64()),  # the image's index in the data (dataset order, as the pass reads it)
    ("label", pa.int32()),
    ("activation", pa.float32()),
    ("command", pa.string()),  # the manifest command that wrote the row
]))  # fmt: skip

# The thumbnails of the images the exemplars refer to, once each (repsub.runstore.exemplars).
IMAGES = TableSpec("images", pa.schema([
    ("image_index", pa.int64()),
    ("label", pa.int32()),
    ("image", pa.binary()),  # JPEG of the model's input (after resize and crop), scaled to a thumbnail
    ("source", pa.string()),  # the data's location (images of other data are never mixed: see exemplars.py)
]))  # fmt: skip

# Per unit and similarity, the simulated 2AFC interpretability index on its exemplars (repsub interpretability).
INTERPRETABILITY = TableSpec("interpretability", pa.schema([
    ("unit", pa.int32()),
    ("similarity", pa.string()),  # repsub.core.interpretability.SIMILARITIES
    ("variant", pa.string()),  # extremal: top vs bottom exemplars; central: the 50-75% vs the 25-50% band
    ("index", pa.float64()),  # mean probability of the right choice: 0.5 chance, 1 always right; NaN: too
    # few images (a central band of a unit that is constant over most images)
    ("trials", pa.int32()),
    ("seed", pa.int64()),
    ("command", pa.string()),  # the manifest command that wrote the row
]), key="similarity")  # fmt: skip

# One row per basis of a layer, in its own file, `<name>.parquet` (repsub.runstore.bases): what it is, how it was
# fitted, its metrics on held-out activation vectors, and its tensors.
BASES = TableSpec("bases", pa.schema([
    ("name", pa.string()),
    ("kind", pa.string()),  # repsub.core.bases.fit.KINDS
    ("size", pa.int32()),  # K, its directions
    ("n_channels", pa.int32()),  # C, the layer's values at one position
    ("signed", pa.bool_()),  # responses of either sign (projections), oriented so the largest are positive
    ("encoder", pa.string()),  # linear, relu, topk (repsub.core.bases.basis)
    ("hash", pa.string()),  # Basis.content_hash(), as the manifest records it
    ("meta", pa.string()),  # JSON: Basis.meta(), its fit settings included
    ("fit", pa.string()),  # JSON: the data, image size, positions, seed of the sampled vectors
    ("model", pa.string()),  # JSON: the identity of the model it was fitted on
    ("fve", pa.float64()),  # fraction of variance explained on held-out vectors
    ("mean_l0", pa.float64()),  # active responses per position (held-out)
    ("dead", pa.int32()),  # directions never active on held-out vectors
    ("stability", pa.float64()),  # mean matched |cosine| with a fit of another seed (NaN: not measured)
    ("n_fit", pa.int64()),  # activation vectors of the fit
    ("n_held_out", pa.int64()),  # ... held out for the metrics
    ("state", pa.binary()),  # .npz of its float32 tensors (directions, encoder_weight, encoder_bias, center)
    ("command", pa.string()),  # the manifest command that wrote the row
]))  # fmt: skip

# Per unit, its activation at STORED_RANKS of the data, from a KLL sketch (repsub.core.quantiles): within
# `rank_error` in rank; written by the selectivity pass (--quantile-k K).
QUANTILES = TableSpec("quantiles", pa.schema([
    ("unit", pa.int32()),
    ("ranks", pa.list_(pa.float64())),  # STORED_RANKS
    ("values", pa.list_(pa.float32())),  # the activation at each rank (NaN for a unit without a value)
    ("k", pa.int32()),  # the sketch's parameter
    ("rank_error", pa.float64()),  # normalized rank error of each value (99% confidence)
    ("n_images", pa.int64()),
    ("command", pa.string()),  # the manifest command that wrote the row
]))  # fmt: skip
STORED_RANKS = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)  # the band edges among them

# Per unit and band of its activation (repsub.core.bands: the ranges between the unit's stored quantiles at
# EDGE_RANKS), the images of the data in it per class (exact) and a seeded sample of them; written by the
# band pass, a second pass over the data after the quantiles (selectivity --bands, a sweep's band phase).
BANDS = TableSpec("bands", pa.schema([
    BASIS_FIELD,
    ("unit", pa.int32()),
    ("band", pa.int32()),  # 0: the lowest (below 25%)
    ("name", pa.string()),  # repsub.core.bands.BAND_NAMES
    ("lower", pa.float32()),  # the band holds activations >= lower and < upper (-inf, +inf at the ends)
    ("upper", pa.float32()),
    ("images", pa.int64()),
    ("class_counts", pa.list_(pa.int64())),  # images of the band per class
    ("sample", pa.list_(pa.int64())),  # image indices of a seeded bottom-k sample, in key order
    ("seed", pa.int64()),  # the sample's seed
    ("command", pa.string()),  # the manifest command that wrote the row
]))  # fmt: skip


TABLES = {spec.name: spec for spec in (SELECTIVITY, UNITS, IMPORTANCE, ACTIVATIONS, EXEMPLARS, IMAGES,
                                       INTERPRETABILITY, BASES, QUANTILES, BANDS)}  # fmt: skip

UNIT_STATUSES = {
    "ok": "the unit responds to its image (own activation > 0)",
    "no_response": "own activation <= 0 on its final image: the optimization never drove the unit",
    "nonfinite": "non-finite activations on its image",
}


def units_status(table: pa.Table) -> pa.Array:
    """Each row's status: the stored one, or for rows of version 1 runs (null status) the same rule applied
    to the stored values: nonfinite if the activation or RS is not finite, no_response if the activation
    is <= 0, else ok."""
    activation = np.asarray(table.column("activation").to_numpy(zero_copy_only=False), dtype=np.float64)
    rs = np.asarray(table.column("rs").to_numpy(zero_copy_only=False), dtype=np.float64)
    derived = np.where(
        ~(np.isfinite(activation) & np.isfinite(rs)),
        "nonfinite",
        np.where(activation <= 0, "no_response", "ok"),
    )
    if "status" not in table.column_names:
        return pa.array(derived, pa.string())
    stored = table.column("status").combine_chunks()
    return pc.if_else(pc.is_null(stored), pa.array(derived, pa.string()), stored)


# ------------------------------------------------------------------ builders: results -> rows


def selectivity_table(class_means: torch.Tensor, n_images: int) -> pa.Table:
    """The selectivity rows of one layer, from its class means [C, N]."""
    from repsub.core.selectivity import selectivity_index  # torch: not for readers of a run

    result = selectivity_index(class_means)
    means = class_means.cpu().numpy().T  # [N, C]
    return pa.table({
        "unit": pa.array(np.arange(means.shape[0]), pa.int32()),
        "selectivity": pa.array(result.selectivity, pa.float64()),
        "top_class": pa.array(result.top_class, pa.int32()),
        "class_means": pa.array(list(means), pa.list_(pa.float64())),
        "n_images": pa.array(np.full(means.shape[0], n_images), pa.int64()),
        "dead": pa.array(result.dead, pa.bool_()),
    })  # fmt: skip


def exemplars_table(sides: dict[str, dict]) -> pa.Table:
    """The exemplars rows of one layer, from {side: {values, index, labels} [k, N]}
    (repsub.core.exemplars.ExemplarAccumulator.side), ordered by unit, side (top first), rank."""
    parts = []
    for side in ("top", "bottom"):
        fields = {name: tensor.cpu().numpy().T for name, tensor in sides[side].items()}  # [N, k]
        units, k = fields["values"].shape
        parts.append({
            "unit": np.repeat(np.arange(units, dtype=np.int32), k),
            "side": np.full(units * k, side, dtype=object),
            "rank": np.tile(np.arange(k, dtype=np.int32), units),
            "image_index": fields["index"].reshape(-1),
            "label": fields["labels"].reshape(-1).astype(np.int32),
            "activation": fields["values"].reshape(-1).astype(np.float32),
        })  # fmt: skip
    columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    order = np.lexsort((columns["rank"], columns["side"] != "top", columns["unit"]))
    schema = EXEMPLARS.schema.remove(EXEMPLARS.schema.get_field_index("command"))
    return pa.table({name: values[order] for name, values in columns.items()}, schema=schema)


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 [H, W, 3] image as the units table stores it (lossless PNG: it reproduces the activations)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes from the units table back to a uint8 [H, W, 3] array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def units_table(method: str, result) -> pa.Table:
    """The units rows of one layer and method, from repsub.optimize.OptimResult."""
    n = len(result.indices)
    return pa.table({
        "method": pa.array([method] * n, pa.string()),
        "unit": pa.array(result.indices, pa.int32()),
        "activation": pa.array(result.activation, pa.float32()),
        "layer_activations": pa.array(list(result.layer_activations), pa.list_(pa.float32())),
        "rs": pa.array(result.rs, pa.float64()),
        "rs_ties": pa.array(result.rs_ties, pa.float64()),
        "status": pa.array(result.status.tolist(), pa.string()),
        "objective_start": pa.array(result.objective_start, pa.float32()),
        "objective_final": pa.array(result.objective_final, pa.float32()),
        "image": pa.array([png_bytes(img) for img in result.images], pa.binary()),
        "seed": pa.array(result.seeds, pa.int64()),
        "steps": pa.array(result.steps, pa.int32()),  # settings.steps; a multiple where rescued
    })  # fmt: skip


def importance_table(results: dict[str, np.ndarray], ablation: str, command: str) -> pa.Table:
    """The importance rows of one layer, from repsub.ablation.AblationCounts.results()."""
    n = len(results["units"])
    return pa.table({
        "unit": pa.array(results["units"], pa.int32()),
        "n_images": pa.array(results["n_images"], pa.int64()),
        "baseline_accuracy": pa.array(results["baseline_accuracy"], pa.float64()),
        "accuracy_drop": pa.array(results["accuracy_drop"], pa.float64()),
        "loss_increase": pa.array(results["loss_increase"], pa.float64()),
        "class_accuracy_drop": pa.array(list(results["class_accuracy_drop"]), pa.list_(pa.float64())),
        "ablation": pa.array([ablation] * n, pa.string()),
        "command": pa.array([command] * n, pa.string()),
    })  # fmt: skip


def with_basis(rows: pa.Table, readout) -> pa.Table:
    """Rows of a readout's targets (repsub.core.readout; None: units) with their `basis` column."""
    name = UNIT_BASIS if readout is None else readout.name
    return rows.append_column("basis", pa.array([name] * rows.num_rows, pa.string()))


def with_layer(tables: dict[str, pa.Table]) -> pa.Table:
    """Per-layer tables as one, with their `layer` column first (what the API returns)."""
    parts = [
        t.add_column(0, "layer", pa.array([name] * t.num_rows, pa.string())) for name, t in tables.items()
    ]
    return pa.concat_tables(parts)


def quantiles_table(values: np.ndarray, k: int, rank_error: float, n_images: int) -> pa.Table:
    """The quantiles rows of one layer, from its units' values at STORED_RANKS ([len(STORED_RANKS), N])."""
    units = values.shape[1]
    return pa.table({
        "unit": pa.array(np.arange(units), pa.int32()),
        "ranks": pa.array([list(STORED_RANKS)] * units, pa.list_(pa.float64())),
        "values": pa.array(list(np.asarray(values, np.float32).T), pa.list_(pa.float32())),
        "k": pa.array(np.full(units, k), pa.int32()),
        "rank_error": pa.array(np.full(units, rank_error), pa.float64()),
        "n_images": pa.array(np.full(units, n_images), pa.int64()),
    })  # fmt: skip


def band_edges(values: np.ndarray, ranks=STORED_RANKS) -> np.ndarray:
    """The band edges [len(EDGE_RANKS), N] among a layer's stored quantiles `values` [len(ranks), N] (exactly
    the stored float32 values, so a band pass given the same table draws the same bands)."""
    from repsub.core.band_ranges import EDGE_RANKS

    ranks = [float(r) for r in ranks]
    missing = [r for r in EDGE_RANKS if r not in ranks]
    if missing:
        raise ValueError(f"the quantiles hold no value at rank(s) {missing}; their ranks: {ranks}")
    return np.asarray(values, np.float32)[[ranks.index(r) for r in EDGE_RANKS]]


def bands_table(edges: np.ndarray, counts: np.ndarray, samples: np.ndarray, seed: int) -> pa.Table:
    """The bands rows of one layer, by unit then band, from its edges [E, N], per-class counts [E + 1, N, C]
    and sampled image indices [E + 1, R, N] (-1: an empty slot) of repsub.core.bands.BandAccumulator."""
    from repsub.core.band_ranges import BAND_NAMES

    n_bands, units, _ = counts.shape
    bounds = np.concatenate(
        [np.full((1, units), -np.inf), np.asarray(edges, np.float64), np.full((1, units), np.inf)]
    ).astype(np.float32)  # [E + 2, N]
    per_row = np.transpose(counts, (1, 0, 2)).reshape(units * n_bands, -1)  # [(unit, band), C]
    picks = np.transpose(samples, (2, 0, 1)).reshape(units * n_bands, -1)  # [(unit, band), R]
    return pa.table({
        "unit": pa.array(np.repeat(np.arange(units), n_bands), pa.int32()),
        "band": pa.array(np.tile(np.arange(n_bands), units), pa.int32()),
        "name": pa.array(list(BAND_NAMES) * units, pa.string()),
        "lower": pa.array(bounds[:-1].T.reshape(-1), pa.float32()),
        "upper": pa.array(bounds[1:].T.reshape(-1), pa.float32()),
        "images": pa.array(per_row.sum(1), pa.int64()),
        "class_counts": pa.array(list(per_row.astype(np.int64)), pa.list_(pa.int64())),
        "sample": pa.array([row[row >= 0].astype(np.int64) for row in picks], pa.list_(pa.int64())),
        "seed": pa.array(np.full(units * n_bands, seed), pa.int64()),
    })  # fmt: skip
