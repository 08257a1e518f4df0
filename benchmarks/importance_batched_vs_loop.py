"""Importance by ablation: batched and cut (repsub) against one full forward per ablated unit.

    .venv/bin/python -m benchmarks.importance_batched_vs_loop [--images 256] [--size 64]

VGG16 with seeded random weights (1000 classes), `--images` random images at `--size` px, zero ablation.
For every layer: repsub's `measure_importance` on `--units` units (the head once per image batch, the
tail once per ablated unit, many units at a time) against the plain way, one full forward over all the
images per ablated unit with the unit zeroed by a hook (`--loop-units` units; the same per unit
whatever the unit). Seconds per unit for both, the ratio per layer, and the ratio over all 13,416
units (each layer weighted by its unit count). Also a projection for the full sweep: 13,416 units on
10,000 ImageNet images at 224 px, from counted FLOPs (torch's FlopCounterMode on the meta device).
Recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from repsub.ablation import ablated_forward, measure_importance
from repsub.ablation.split import SplitModel
from repsub.models import load_model


def loop_seconds_per_unit(model, layer, units, images, batch) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        for unit in units:
            for first in range(0, len(images), batch):
                ablated_forward(model, layer, unit, 0.0, images[first : first + batch])
    return (time.perf_counter() - started) / len(units)


def batched_seconds_per_unit(model, layer, units, images, labels, batch) -> float:
    batches = [(images[i : i + batch], labels[i : i + batch]) for i in range(0, len(images), batch)]
    started = time.perf_counter()
    measure_importance(model, layer, units, batches, model.num_classes, progress=False)
    return (time.perf_counter() - started) / len(units)


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def projection(model, size: int = 224, images: int = 10_000, gpus: int = 8, tflops: float = 20.0) -> str:
    """The full sweep's cost from counted FLOPs: per layer, the head once per image per shard of 64 units and
    the tail once per image per unit; against one full forward per image per unit."""
    with torch.device("meta"):
        x = torch.empty(1, 3, size, size)
        full = flops(lambda: model.module.to("meta")(x))
        batched = 0
        for layer in model.layers:
            split = SplitModel(model.module, layer.module)
            head = flops(lambda s=split: s.prefix(x))
            crossing = split.prefix(x)
            tail = flops(lambda s=split, c=crossing: s.suffix(*c))
            shards = -(-layer.n_units // 64)
            batched += images * (head * shards + tail * layer.n_units)
    units = sum(layer.n_units for layer in model.layers)
    plain = images * full * units
    hours = batched / (gpus * tflops * 1e12) / 3600
    return (
        f"full VGG16 sweep, {units} units x {images} images at {size} px: batched+cut {batched / 1e15:.0f} PFLOP "
        f"vs one forward per unit {plain / 1e15:.0f} PFLOP ({plain / batched:.1f}x less); on {gpus} GPUs at an "
        f"assumed {tflops:.0f} TFLOP/s each: {hours:.1f} h"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--units", type=int, default=64, help="units per layer, batched (a sweep shard's 64)")
    parser.add_argument("--loop-units", type=int, default=1, help="units per layer, one forward each")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    model = load_model("vgg16", "random", seed=0)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.size, args.size, generator=generator)
    labels = torch.randint(0, 1000, (args.images,), generator=generator)
    print(f"VGG16 random, {args.images} images at {args.size} px, {torch.get_num_threads()} threads")
    print(f"{'layer':<8} {'units':>5} {'loop s/unit':>12} {'batched s/unit':>15} {'ratio':>7}")
    total_loop = total_batched = 0.0
    for layer in model.layers:
        units = list(range(min(args.units, layer.n_units)))
        loop = loop_seconds_per_unit(model, layer, units[: args.loop_units], images, args.batch)
        batched = batched_seconds_per_unit(model, layer, units, images, labels, args.batch)
        total_loop += loop * layer.n_units
        total_batched += batched * layer.n_units
        print(f"{layer.name:<8} {layer.n_units:>5} {loop:>12.3f} {batched:>15.4f} {loop / batched:>7.1f}")
    print(
        f"all {sum(layer.n_units for layer in model.layers)} units (layers weighted by unit count): loop "
        f"{total_loop / 3600:.2f} h, batched {total_batched / 3600:.2f} h, ratio {total_loop / total_batched:.1f}"
    )
    print(projection(load_model("vgg16", "random", seed=0)))


if __name__ == "__main__":
    main()
