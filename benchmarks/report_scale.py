"""The report at full VGG16 scale: page size and the time Chromium takes to open it.

    .venv/bin/python -m benchmarks.report_scale [--cache /tmp/repsub-bench] [--opens 3]

1. Generates (once, kept under --cache) a run of VGG16's shape: the 16 layers of its catalog in the
   manifest (13,416 units), selectivity rows with 1,000 class means, and AM and IAM units rows with their
   layer activations, RS and 224 px PNG images. The images are synthetic but image-like: colour textures
   with a 1/f spectrum (as Fourier-parameterized AM/IAM images), 1,024 distinct ones reused across units,
   so PNG and thumbnail sizes are realistic. About 5% of the units fail (no_response), 2% are dead.
2. Writes the report (timed by stage) and prints the size of report.html, of its thumbnails and of the rest.
3. Opens the page in headless Chromium `--opens` times (a fresh browser each time) and prints the time
   from navigation to a usable gallery (the explorer's first page of thumbnails decoded), then the time a
   filter and a unit's detail take to appear.
Goals (issue 12): report.html under 60 MB, open in under 5 s.

`--exemplars` (issue 19) adds to the run what `repsub selectivity --exemplars 16` and `repsub
interpretability` write over ImageNet val: every unit's 16 top and 16 bottom exemplars drawn uniformly from
50,000 images (the worst case for the page: every image is some unit's exemplar), their 50,000 thumbnails (64
px JPEG of image-like textures) and the index under two similarities; then it prints the exemplar strips' share
of the page. With `--no-images` the run has no AM/IAM images, so the page holds no AM/IAM thumbnails (their
38.3 MB are measured without it), which keeps the run to a few minutes. It also adds what the band pass
writes (issue 19): each unit's quantiles (k = 200) and its 7 bands with their 50,000 images split as the band
widths say, per-class counts drawn from a skewed class profile and 16 sampled images each (add_bands); it prints
the tables' stored sizes, the band summaries' share of the page and the bands in a unit's detail.

`--pass-memory` measures a data worker's memory for the exemplars, quantile sketches and bands of VGG16's 13,416
units (pass_memory), with the sizes of the partial files a data shard saves.

The run also holds importance rows (issue 14: both ablations for every unit, as `repsub importance` writes
them). `--light` writes the same run without images, class means and layer activations (a minute, not an
hour) and times only the reading and the statistics: the RS statistics and importance against RS and
selectivity (12 Spearman rhos with 1,000 bootstrap resamples per layer and ablation).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from repsub.runstore.writer import RunWriter
from tests.run_helpers import record_command

VGG16 = [("conv1_1", 64), ("conv1_2", 64), ("conv2_1", 128), ("conv2_2", 128), ("conv3_1", 256),
         ("conv3_2", 256), ("conv3_3", 256), ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512),
         ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512), ("fc6", 4096), ("fc7", 4096), ("fc8", 1000)]  # fmt: skip
CATALOG = [
    {"name": name, "units": units, "module": name, "kind": "conv" if name.startswith("conv") else "linear",
     "read": "logits" if name == "fc8" else "relu", "depth": depth}
    for depth, (name, units) in enumerate(VGG16)
]  # fmt: skip
IDENTITY = {"model": "vgg16", "weights": "synthetic", "weights_sha256": "0" * 64, "num_classes": 1000}
IMAGE_SIDE = 224
DISTINCT_IMAGES = 1024
UNITS_PER_FILE = 256  # as a sweep's unit shards


def image_like(rng: np.random.Generator, side: int = IMAGE_SIDE) -> np.ndarray:
    """A colour texture with a 1/f amplitude spectrum and decorrelated colour, through a sigmoid: the
    statistics of a Fourier-parameterized AM/IAM image (PNG of about 135 KiB at 224 px)."""
    fy, fx = np.fft.fftfreq(side)[:, None], np.fft.rfftfreq(side)[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1 / side
    spectrum = (
        rng.normal(size=(3, side, side // 2 + 1)) + 1j * rng.normal(size=(3, side, side // 2 + 1))
    ) / freq
    x = np.fft.irfft2(spectrum, s=(side, side))
    colour = np.array([[0.26, 0.09, 0.02], [0.27, 0.0, -0.05], [0.27, -0.09, 0.03]]) * 3
    x = np.einsum("ij,jhw->hwi", colour, x / x.std())
    return (255 / (1 + np.exp(-1.5 * x))).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def importance_rows(rng: np.random.Generator, layer_units: int, ablation: str) -> pa.Table:
    """Importance rows of one layer: accuracy drops of a few of 50,000 images (many ties), loss increases."""
    drop = (
        np.round(rng.exponential(2e-4, layer_units) * 50_000) / 50_000
        - rng.binomial(1, 0.1, layer_units) * 2e-5
    )
    return pa.table({
        "unit": pa.array(np.arange(layer_units), pa.int32()),
        "n_images": pa.array(np.full(layer_units, 50_000), pa.int64()),
        "baseline_accuracy": pa.array(np.full(layer_units, 0.716), pa.float64()),
        "accuracy_drop": pa.array(drop, pa.float64()),
        "loss_increase": pa.array(rng.exponential(1e-3, layer_units), pa.float64()),
        "class_accuracy_drop": pa.array([rng.normal(0, 0.01, 1000).round(3) for _ in range(layer_units)],
                                        pa.list_(pa.float64())),
        "ablation": pa.array([ablation] * layer_units, pa.string()),
        "command": pa.array([f"importance/{ablation}"] * layer_units, pa.string()),
    })  # fmt: skip


def generate_run(out: Path, light: bool = False, images: bool = True) -> Path:
    """The run (module doc); `light`: no images, class means or layer activations; `images` False: no images."""
    if (out / "manifest.json").is_file():
        return out
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    images = images and not light
    pictures = [png(image_like(rng)) if images else None for _ in range(DISTINCT_IMAGES)]
    if images:
        print(f"generated {DISTINCT_IMAGES} distinct images in {time.perf_counter() - started:.0f} s, "
              f"{np.mean([len(p) for p in pictures]) / 1024:.0f} KiB each on average")  # fmt: skip
    writer = RunWriter(out)
    for depth, (layer, n) in enumerate(VGG16):
        means = rng.gamma(0.5, 1.0, size=(n, 1000)) * rng.uniform(0.2, 2.0, size=(n, 1))
        dead = rng.uniform(size=n) < 0.02
        means[dead] = 0
        top = means.argmax(axis=1)
        mu_max = means.max(axis=1)
        mu_rest = (means.sum(axis=1) - mu_max) / 999
        with np.errstate(invalid="ignore"):
            selectivity = np.where(dead, np.nan, (mu_max - mu_rest) / (mu_max + mu_rest))
        writer.write_selectivity(layer, pa.table({
            "unit": pa.array(np.arange(n), pa.int32()),
            "selectivity": pa.array(selectivity, pa.float64()),
            "top_class": pa.array(np.where(dead, -1, top), pa.int32()),
            "class_means": pa.array([[]] * n if light else list(means), pa.list_(pa.float64())),
            "n_images": pa.array(np.full(n, 50_000), pa.int64()),
            "dead": pa.array(dead, pa.bool_()),
        }))  # fmt: skip
        for method in ("am", "iam"):
            for start in range(0, n, UNITS_PER_FILE):
                units = np.arange(start, min(start + UNITS_PER_FILE, n))
                acts = rng.gamma(1.0, 1.0, size=(len(units), n)).astype(np.float32)
                failed = rng.uniform(size=len(units)) < 0.05
                acts[np.arange(len(units)), units] = np.where(
                    failed, 0.0, acts[np.arange(len(units)), units] * 8
                )
                own = acts[np.arange(len(units)), units]
                rs = (acts > own[:, None]).sum(axis=1) / n
                ties = ((acts == own[:, None]).sum(axis=1) - 1) / (n - 1)
                chosen = (units * 7 + depth * 131 + (method == "iam") * 509) % DISTINCT_IMAGES
                writer.write_units(method, layer, pa.table({
                    "method": [method] * len(units),
                    "unit": pa.array(units, pa.int32()),
                    "activation": pa.array(own, pa.float32()),
                    "layer_activations": pa.array([[]] * len(units) if light else list(acts),
                                                  pa.list_(pa.float32())),
                    "rs": pa.array(rs, pa.float64()),
                    "rs_ties": pa.array(ties, pa.float64()),
                    "status": pa.array(np.where(own > 0, "ok", "no_response")),
                    "objective_start": pa.array(rng.normal(size=len(units)), pa.float32()),
                    "objective_final": pa.array(own, pa.float32()),
                    "image": pa.array([pictures[i] for i in chosen], pa.binary()),  # None when light
                    "seed": pa.array(units, pa.int64()),
                    "steps": pa.array(np.full(len(units), 256), pa.int32()),
                }), replace_existing=False)  # fmt: skip
        for ablation in ("zero", "mean"):
            writer.write_table("importance", layer, importance_rows(rng, n, ablation))
        print(f"  wrote {layer}: {n} units, AM, IAM and importance ({time.perf_counter() - started:.0f} s)",
              flush=True)  # fmt: skip
    config = {"data": {"classes": [f"n{i:08d}" for i in range(1000)]}}
    record_command(writer, "selectivity", IDENTITY, config, CATALOG, {"reduce": "mean"})
    record_command(writer, "visualize/am", IDENTITY, {}, CATALOG, {"reduce": "mean"})
    record_command(writer, "visualize/iam", IDENTITY, {}, CATALOG, {"reduce": "mean"})
    for ablation in ("zero", "mean"):
        record_command(
            writer, f"importance/{ablation}", IDENTITY, {"ablation": ablation}, CATALOG, {"reduce": "mean"}
        )
    return out


N_IMAGES = 50_000
K = 16


def jpeg_thumbnail(rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image_like(rng, 64)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def add_exemplars(out: Path) -> None:
    """The exemplars, images and interpretability tables of a full VGG16 pass over ImageNet val (module doc)."""
    if (out / "images").is_dir():
        return
    rng = np.random.default_rng(19)
    started = time.perf_counter()
    writer = RunWriter(out)
    for layer, n in VGG16:
        per_side = n * K
        writer.write_table("exemplars", layer, pa.table({
            "unit": pa.array(np.repeat(np.arange(n), 2 * K), pa.int32()),
            "side": pa.array(np.tile(np.repeat(["top", "bottom"], K), n)),
            "rank": pa.array(np.tile(np.arange(K), 2 * n), pa.int32()),
            "image_index": pa.array(rng.integers(0, N_IMAGES, 2 * per_side), pa.int64()),
            "label": pa.array(rng.integers(0, 1000, 2 * per_side), pa.int32()),
            "activation": pa.array(rng.gamma(1.0, 1.0, 2 * per_side), pa.float32()),
        }))  # fmt: skip
        for similarity in ("labels", "pixels"):
            writer.write_table("interpretability", layer, pa.table({
                "unit": pa.array(np.arange(n), pa.int32()), "similarity": [similarity] * n,
                "variant": ["extremal"] * n, "index": pa.array(rng.uniform(0.45, 1.0, n)),
                "trials": pa.array(np.full(n, 20), pa.int32()), "seed": pa.array(np.zeros(n), pa.int64()),
            }))  # fmt: skip
    thumbnails = [jpeg_thumbnail(rng) for _ in range(N_IMAGES)]
    writer.write_whole_table("images", pa.table({
        "image_index": pa.array(np.arange(N_IMAGES), pa.int64()),
        "label": pa.array(rng.integers(0, 1000, N_IMAGES), pa.int32()),
        "image": pa.array(thumbnails, pa.binary()), "source": ["imagenet-val"] * N_IMAGES,
    }))  # fmt: skip
    for similarity in ("labels", "pixels"):
        record_command(writer, f"interpretability/{similarity}", IDENTITY, {}, CATALOG, {"reduce": "mean"})
    print(f"added exemplars, {N_IMAGES} thumbnails ({np.mean([len(t) for t in thumbnails]) / 1024:.1f} KiB "
          f"each) and the index in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip


BAND_SAMPLE = 16  # the band pass's reservoir (repsub.core.bands.DEFAULT_RESERVOIR)
QUANTILE_K = 200  # the sketches' k (repsub.core.quantiles.DEFAULT_K)
# How much more (or less) a unit's preferred classes are drawn in each band, band 0 first: anti-preferences
# below 25%, a flat middle, a few classes concentrated in the top bands (the top 0.1% holds about 16% of one class).
BAND_SKEW = (-0.5, 0.0, 0.2, 0.5, 1.0, 2.0, 3.0)


def add_bands(out: Path) -> None:
    """The quantiles and bands tables of the band pass over ImageNet val (`repsub selectivity --exemplars 16`
    with its default --quantile-k 200 and band pass): each unit's 7 bands hold 50,000 images as the band
    widths say (the page's worst case: no band empty, as post-ReLU units' would be), their per-class counts
    drawn multinomially from a per-unit class profile skewed by BAND_SKEW, and 16 sampled images per band drawn
    from the 50,000 (whose thumbnails add_exemplars stored)."""
    if (out / "bands").is_dir():
        return
    from scipy import stats

    from repsub.core.band_ranges import EDGE_RANKS
    from repsub.core.quantiles import QuantileSketches
    from repsub.runstore.tables import STORED_RANKS, band_edges, bands_table, quantiles_table

    rng = np.random.default_rng(20)
    started = time.perf_counter()
    writer = RunWriter(out)
    rank_error = QuantileSketches({}, QUANTILE_K).rank_error
    widths = np.diff([0.0, *EDGE_RANKS, 1.0])
    per_band = np.round(widths * N_IMAGES).astype(np.int64)  # 12,500 ... 50 images
    skew = np.array(BAND_SKEW)[None, :, None]
    for layer, n in VGG16:
        ranks = np.clip(STORED_RANKS, 1e-5, 1 - 1e-5)[:, None]
        values = stats.gamma.ppf(ranks, rng.uniform(0.5, 3.0, n)) * rng.uniform(0.2, 2.0, n)  # [ranks, N]
        writer.write_table("quantiles", layer, quantiles_table(values, QUANTILE_K, rank_error, N_IMAGES))
        counts = np.empty((len(per_band), n, 1000), np.int64)
        for start in range(0, n, 512):  # [units, bands, classes] profiles, a slice at a time (memory)
            preference = rng.normal(size=(min(512, n - start), 1, 1000))
            profile = np.exp(skew * preference)
            profile /= profile.sum(axis=2, keepdims=True)
            drawn = rng.multinomial(per_band[None, :], profile)  # [units, bands, classes]
            counts[:, start : start + len(drawn)] = drawn.transpose(1, 0, 2)
        samples = rng.integers(0, N_IMAGES, size=(len(per_band), BAND_SAMPLE, n))
        writer.write_table("bands", layer, bands_table(band_edges(values), counts, samples, seed=0))
        print(f"  wrote {layer}'s quantiles and bands ({time.perf_counter() - started:.0f} s)", flush=True)
    config = {"data": {"classes": [f"n{i:08d}" for i in range(1000)]}, "quantile_k": QUANTILE_K,
              "bands": {"edge_ranks": list(EDGE_RANKS), "sample": BAND_SAMPLE, "seed": 0}}  # fmt: skip
    record_command(writer, "selectivity", IDENTITY, config, CATALOG, {"reduce": "mean"})


def stored_sizes(run: Path) -> None:
    """The bytes on disk of the tables the exemplar and band passes write."""
    for table in ("bands", "quantiles", "exemplars", "images"):
        files = [f for f in (run / table).rglob("*.parquet")]
        print(f"stored {table}: {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in {len(files)} files")


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) MB of this process (Linux: /proc/self/status)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            found[line[:5]] = int(line.split()[1]) / 1024
    return found["VmRSS"], found["VmHWM"]


def saved_mb(state: dict) -> float:
    """The size of a state as a data shard saves its partial file (repsub.sweep.commit: torch.save)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell() / 1e6


def pass_memory(batches: int, batch_size: int) -> None:
    """A data worker's memory at VGG16's shape: the first pass's ExemplarAccumulator (k = 16) and
    QuantileSketches (k = 200), then the band pass's BandAccumulator (reservoir 16, 1,000 classes, edges from the
    sketches), each fed `batches` batches of random [B, N] activations (as the pass reduces them) of VGG16's 16
    layers (widths from its catalog, without weights); the sketches, cheap to feed, get a whole ImageNet val
    (their size grows with the images). Prints the resident memory each one adds when built and while fed (the
    process's peak), the size of its partial file, and the estimates."""
    import torch

    from repsub.core.bands import BandAccumulator
    from repsub.core.exemplars import ExemplarAccumulator
    from repsub.core.quantiles import QuantileSketches
    from repsub.models import model_catalog
    from repsub.runstore.tables import STORED_RANKS, band_edges

    widths = {layer.name: layer.n_units for layer in model_catalog("vgg16").layers}
    units = sum(widths.values())
    generator = torch.Generator().manual_seed(0)

    def build(make, name: str):
        resident = memory_mb()[0]
        accumulator = make()
        print(f"{name}: built +{memory_mb()[0] - resident:.0f} MB resident", flush=True)
        return accumulator

    def feed(accumulator, name: str, count: int = batches) -> None:
        resident = memory_mb()[0]
        started = time.perf_counter()
        for b in range(count):
            acts = {layer: torch.rand(batch_size, n, generator=generator) ** 3 for layer, n in widths.items()}
            labels = torch.randint(0, 1000, (batch_size,), generator=generator)
            accumulator.add(acts, labels, torch.arange(b * batch_size, (b + 1) * batch_size))
        now, peak = memory_mb()
        print(f"{name}: fed {count * batch_size:,} images, {(time.perf_counter() - started) / count * 1000:.0f} ms "
              f"a batch; +{now - resident:.0f} MB resident after, process peak {peak:.0f} MB; partial file "
              f"{saved_mb(accumulator.state_dict()):.1f} MB", flush=True)  # fmt: skip

    now, peak = memory_mb()
    print(f"VGG16: {len(widths)} layers, {units:,} units; batches of {batch_size} random activations; at the "
          f"start {now:.0f} MB resident (torch and repsub imported)", flush=True)  # fmt: skip
    exemplars = build(lambda: ExemplarAccumulator(widths, K), "ExemplarAccumulator (k = 16)")
    feed(exemplars, "ExemplarAccumulator")
    sketches = build(lambda: QuantileSketches(widths, QUANTILE_K), f"QuantileSketches (k = {QUANTILE_K})")
    feed(sketches, "QuantileSketches", -(-N_IMAGES // batch_size))
    edges = {layer: band_edges(sketches.quantiles(layer, STORED_RANKS)) for layer in widths}
    bands = build(
        lambda: BandAccumulator(edges, 1000, BAND_SAMPLE), f"BandAccumulator (reservoir {BAND_SAMPLE})"
    )
    feed(bands, "BandAccumulator")
    n_bands, widest = bands.n_bands, max(widths.values())
    print(f"estimates: exemplars 2 sides x {K} x {units:,} x (4 + 8 + 4) B = {2 * K * units * 16 / 1e6:.1f} MB; "
          f"band counts {n_bands} x {units:,} x 1,000 x 8 B = {n_bands * units * 1000 * 8 / 1e6:.0f} MB, "
          f"band samples (key, index) {n_bands} x {BAND_SAMPLE} x {units:,} x 16 B = "
          f"{n_bands * BAND_SAMPLE * units * 16 / 1e6:.0f} MB; the band pass's temporaries of the widest layer "
          f"(bands x (reservoir + B) x N int64, keys and indices) 2 x {n_bands} x ({BAND_SAMPLE} + {batch_size}) x "
          f"{widest:,} x 8 B = {2 * n_bands * (BAND_SAMPLE + batch_size) * widest * 8 / 1e6:.0f} MB; the batch "
          f"itself {batch_size} x {units:,} x 4 B = {batch_size * units * 4 / 1e6:.1f} MB")  # fmt: skip


def ranking_bootstrap(x, y, rng, resamples, confidence=0.95):
    """The bootstrap as it was before the counts (repsub.analysis.stats): scipy's rankdata on each resample.
    The same draws, the same interval: the baseline of `--light`'s comparison."""
    from scipy import stats

    n = len(x)
    if n < 3 or resamples < 1:
        return np.nan, np.nan, 0
    rhos = []
    for start in range(0, resamples, 100):
        idx = np.stack([rng.integers(0, n, size=n) for _ in range(min(100, resamples - start))])
        xr, yr = stats.rankdata(x[idx], axis=1), stats.rankdata(y[idx], axis=1)
        xr -= xr.mean(axis=1, keepdims=True)
        yr -= yr.mean(axis=1, keepdims=True)
        denom = np.sqrt((xr * xr).sum(axis=1) * (yr * yr).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (xr * yr).sum(axis=1) / denom
        rho[denom == 0] = np.nan
        rhos.append(np.clip(rho, -1.0, 1.0))
    rho = np.concatenate(rhos)
    rho = rho[np.isfinite(rho)]
    if not rho.size:
        return np.nan, np.nan, 0
    low, high = np.percentile(rho, [100 * (1 - confidence) / 2, 100 - 100 * (1 - confidence) / 2])
    return float(low), float(high), int(rho.size)


def time_statistics(run: Path, rounds: int = 2) -> None:
    """The statistics with the bootstrap by counts and by ranking each resample, alternately."""
    from repsub.analysis import compute_stats, load_run_data
    from repsub.analysis import importance_stats as importance_module
    from repsub.analysis import stats as stats_module
    from repsub.analysis.importance_stats import compute_importance_stats
    from repsub.analysis.run import open_run

    started = time.perf_counter()
    data = load_run_data(open_run(run))
    print(f"load {time.perf_counter() - started:.1f} s")
    counts = stats_module.bootstrap_spearman
    results = {}
    for _ in range(rounds):
        for name, bootstrap in (("counts", counts), ("ranking each resample", ranking_bootstrap)):
            stats_module.bootstrap_spearman = importance_module.bootstrap_spearman = bootstrap
            started = time.perf_counter()
            rs = compute_stats(data)
            middle = time.perf_counter()
            importance = compute_importance_stats(data)
            done = time.perf_counter()
            results[name] = (rs, importance)
            print(f"{name}: RS statistics {middle - started:.1f} s ({rs.num_rows} rows), importance statistics "
                  f"{done - middle:.1f} s ({importance.num_rows} rows), 1,000 resamples each", flush=True)  # fmt: skip
    stats_module.bootstrap_spearman = importance_module.bootstrap_spearman = counts
    for i, what in enumerate(("RS", "importance")):
        a, b = (results[name][i] for name in results)
        gap = max(np.nanmax(np.abs(a.column(c).to_numpy() - b.column(c).to_numpy()), initial=0)
                  for c in ("rho_ci_low", "rho_ci_high"))  # fmt: skip
        print(f"{what} intervals: largest difference between the two {gap:.1e}")


def time_report(run: Path, out: Path) -> Path:
    from repsub.analysis import compute_stats, load_run_data
    from repsub.analysis.report import build_report
    from repsub.analysis.run import open_run
    from repsub.analysis.thumbnails import image_side, thumbnail_side, thumbnails

    started = time.perf_counter()
    data = load_run_data(open_run(run))
    loaded = time.perf_counter()
    compute_stats(data)
    from repsub.analysis.importance_stats import compute_importance_stats

    compute_importance_stats(data)
    stats = time.perf_counter()
    rows = sum(len(r.indices) for r in data.rows.values())
    side = thumbnail_side(rows, image_side(data))
    thumbs = thumbnails(data, side)
    thumbed = time.perf_counter()
    print(f"stages: load {loaded - started:.1f} s, statistics (RS and importance) {stats - loaded:.1f} s, "
          f"{len(thumbs)} thumbnails of {side} px {thumbed - stats:.1f} s")  # fmt: skip
    started = time.perf_counter()
    page = build_report(run, out)[0]
    print(f"repsub report (all of it): {time.perf_counter() - started:.1f} s")
    text = page.read_text(encoding="utf-8")
    thumbs_part = text.split('id="explorer-thumbs">', 1)[1].split("</script>", 1)[0]
    data_part = text.split('id="explorer-data">', 1)[1].split("</script>", 1)[0]
    strips = text.split('id="exemplar-thumbs">', 1)[1].split("</script>", 1)[0]
    mb = 1e6
    print(f"report.html: {page.stat().st_size / mb:.1f} MB (thumbnails {len(thumbs_part) / mb:.1f} MB, "
          f"{len(thumbs_part) / rows / 1024:.2f} KiB each as base64; explorer data {len(data_part) / mb:.1f} MB; "
          f"exemplar thumbnails {len(strips) / mb:.1f} MB; "
          f"rest {(len(text) - len(thumbs_part) - len(data_part) - len(strips)) / mb:.1f} MB)")  # fmt: skip
    if strips != "[]":
        import json

        from repsub.analysis.exemplar_strips import STRIP

        count = len(json.loads(strips))
        document = json.loads(data_part)
        side = document["exemplars"]["side"]
        print(f"exemplar strips: {count} distinct images of {side} px, {len(strips) / max(count, 1):.0f} B each "
              f"as base64; {STRIP} per side and unit")  # fmt: skip
        units = document["units"]
        if "bands" in units:
            from repsub.analysis.bands import BAND_STRIP

            parts = {
                key: len(json.dumps(units[key], separators=(",", ":")))
                for key in ("bands", "band_strip", "ex_top", "ex_bottom")
            }
            print(f"explorer data: band summaries {parts['bands'] / mb:.1f} MB, band strip positions "
                  f"{parts['band_strip'] / mb:.1f} MB ({BAND_STRIP} per band), exemplar strip positions "
                  f"{(parts['ex_top'] + parts['ex_bottom']) / mb:.1f} MB, "
                  f"the rest {(len(data_part) - sum(parts.values())) / mb:.1f} MB")  # fmt: skip
    return page


def time_open(page: Path, opens: int, images: bool = True) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.chromium import Chromium

    usable, loaded, filtering, detail = [], [], [], []
    for _ in range(opens):
        with Chromium(width=1280, height=900) as browser:
            started = time.perf_counter()
            loaded.append(browser.open(page.as_uri()))
            browser.evaluate("window.repsubExplorer.ready")
            usable.append(time.perf_counter() - started)
            shown = browser.evaluate("document.querySelectorAll('#gallery .card img').length")
            decoded = browser.evaluate(
                "Array.from(document.querySelectorAll('#gallery .card img')).filter((i) => i.naturalWidth > 0).length"
            )
            assert not images or shown == decoded > 0, (shown, decoded)  # without images: empty cards
            started = time.perf_counter()
            browser.click_element("#f-rs-min")
            browser.type_text("0.9")
            browser.wait_for("document.getElementById('match-count').textContent.split(' ')[0] !== '26,832'")
            filtering.append(time.perf_counter() - started)
            started = time.perf_counter()
            browser.click_element("#gallery .card")
            browser.wait_for("document.getElementById('unit-detail').open")
            browser.wait_for(
                "Array.from(document.querySelectorAll('#detail-exemplars img, #detail-bands img'))"
                ".every((i) => i.complete)"
            )  # the strips decoded, when the run has them (the first detail parses their thumbnails)
            detail.append(time.perf_counter() - started)
            band_rows = browser.evaluate("document.querySelectorAll('#detail-bands tr').length")
            band_images = browser.evaluate(
                "Array.from(document.querySelectorAll('#detail-bands img')).filter((i) => i.naturalWidth > 0).length"
            )
    if band_rows:
        print(f"the last unit's detail: {band_rows} bands, {band_images} band thumbnails decoded")
    med = statistics.median
    print(f"Chromium, {opens} opens: load event {med(loaded):.2f} s (min {min(loaded):.2f}), usable gallery "
          f"{med(usable):.2f} s (min {min(usable):.2f}, max {max(usable):.2f}); filter RS >= 0.9 "
          f"{med(filtering) * 1000:.0f} ms; open a unit {med(detail) * 1000:.0f} ms (medians)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/repsub-bench"))
    parser.add_argument("--opens", type=int, default=3)
    parser.add_argument("--light", action="store_true", help="no images: time the statistics only")
    parser.add_argument("--exemplars", action="store_true", help="add exemplars, thumbnails and the index")
    parser.add_argument(
        "--no-images", action="store_true", help="with --exemplars: a run without AM/IAM images"
    )
    parser.add_argument(
        "--pass-memory",
        action="store_true",
        help="a data worker's memory for exemplars, sketches and bands at VGG16's shape",
    )
    parser.add_argument("--batches", type=int, default=32, help="with --pass-memory: batches fed to each")
    parser.add_argument("--batch-size", type=int, default=64, help="with --pass-memory (repsub's default)")
    args = parser.parse_args()
    if args.pass_memory:
        pass_memory(args.batches, args.batch_size)
        return
    if args.exemplars:
        name = "report-scale-vgg16" + ("-noimages" if args.no_images else "")
        run = generate_run(args.cache / name / "run", images=not args.no_images)
        add_exemplars(run)
        add_bands(run)
        stored_sizes(run)
        page = time_report(run, args.cache / name / "report-exemplars")
        time_open(page, args.opens, images=not args.no_images)
        return
    if args.light:
        time_statistics(generate_run(args.cache / "report-scale-vgg16-light" / "run", light=True))
        return
    run = generate_run(args.cache / "report-scale-vgg16" / "run")
    page = time_report(run, args.cache / "report-scale-vgg16" / "report")
    time_open(page, args.opens)


if __name__ == "__main__":
    main()
