"""What the range of activations costs in the data passes (issue 19's goal: at most 1.15x a bare forward).

VGG16 with seeded random weights at 64 px, all 16 layers (13,416 units), the same in-memory generated batches,
fp32, interleaved rounds, best of --repeats:

- bare forward: `model(x)`, nothing read;
- selectivity pass: the per-class float64 sums only (`accumulate_class_sums`);
- + exemplars + quantiles: the same pass also keeping every unit's top-16 and bottom-16 images
  (repsub.core.exemplars) and feeding its KLL sketch (k = 200, repsub.core.quantiles): what
  `repsub selectivity --out` does by default;
- band pass: the second pass (forward, then every unit's band by its quantile edges: per-class counts and a
  seeded reservoir of 16 image indices per band, repsub.core.bands).

    .venv/bin/python -m benchmarks.exemplar_pass_cost [--images 256] [--repeats 3] [--max-load 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.machine import best_of_interleaved, load_average, wait_for_quiet
from benchmarks.selectivity_precision import in_memory_batches
from repsub.capture.precision import Precision, as_input, prepare_for_speed
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.core.bands import EDGE_RANKS, BandAccumulator
from repsub.core.exemplars import ExemplarAccumulator
from repsub.core.quantiles import QuantileSketches
from repsub.models import load_model

FP32 = Precision("fp32", "fp32", "benchmark")
CLASSES = 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-load", type=float, default=None)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "repsub-bench")
    args = parser.parse_args(argv)
    model = load_model("vgg16", "random", seed=0, num_classes=CLASSES)
    batches = in_memory_batches(args.cache, args.images, 64, 32)
    widths = {layer.name: layer.n_units for layer in model.layers}
    channels_last = prepare_for_speed(model.module, "cpu")

    def each(*callbacks):
        def on_batch(activations, labels):
            for callback in callbacks:
                callback(activations, labels)

        return on_batch

    def bare():
        with torch.no_grad():
            for images, _ in batches:
                model.module(as_input(images, channels_last))

    def class_sums(on_batch=None):
        accumulate_class_sums(model, model.layers, batches, CLASSES, progress=False, precision=FP32,
                              on_batch=on_batch)  # fmt: skip

    sketched = {}

    def with_range():
        exemplars = ExemplarAccumulator(widths, 16)
        sketches = QuantileSketches(widths, 200)
        class_sums(each(exemplars.add, sketches.add))
        sketched["edges"] = {
            name: torch.as_tensor(sketches.quantiles(name, EDGE_RANKS), dtype=torch.float32)
            for name in widths
        }

    def band_pass():
        bands = BandAccumulator(sketched["edges"], CLASSES, reservoir=16, seed=0)
        class_sums(bands.add)  # the band pass is the same capture; its class sums are the small part

    sides = {"bare forward": bare, "selectivity pass (class sums)": class_sums,
             "+ exemplars k=16 + KLL k=200": with_range, "band pass (reservoir 16)": band_pass}  # fmt: skip
    for run in sides.values():  # warm-up (and the edges for the band pass)
        run()
    load = wait_for_quiet(args.max_load)
    timings = best_of_interleaved(sides, args.repeats)
    n = sum(len(labels) for _, labels in batches)
    print(f"VGG16 at 64 px, all {len(model.layers)} layers ({sum(widths.values())} units), {n} images in batches "
          f"of 32, {torch.get_num_threads()} threads, best of {args.repeats}, load average {load:.2f} before, "
          f"{load_average():.2f} after")  # fmt: skip
    for side, seconds in timings.items():
        ratio = seconds / timings["bare forward"]
        print(f"  {side:<32} {seconds:7.3f} s  {n / seconds:7.1f} img/s  {ratio:.3f}x bare forward")
    print("  goal: the selectivity pass with exemplars and quantiles, and the band pass, at most 1.15x")


if __name__ == "__main__":
    main()
