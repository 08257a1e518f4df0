"""Batched, cut AM/IAM against a one-unit-at-a-time loop through the whole network.

The loop is how feature-visualization libraries usually render a channel: one image, the full
forward to the logits at every step, one unit after another. Both sides use the same
parameterization, transforms, steps and image size; only batching and the cut differ.

    .venv/bin/python benchmarks/optimize_batched_vs_loop.py [--steps 10] [--image-size 64]

Prints units per second per layer and overall, and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from repsub.capture.reader import LayerCapture
from repsub.models import load_model
from repsub.optimize import OptimSettings, optimize_units
from repsub.optimize.objectives import METHODS
from repsub.optimize.param import FourierImage
from repsub.optimize.render import unit_seed
from repsub.optimize.transforms import RandomAffine


def loop_one_unit(model, layer, unit, method, settings):
    """One unit, one image, the whole network forward at every step (no stop at the layer)."""
    generator = [torch.Generator().manual_seed(unit_seed(0, layer.name, unit))]
    image = FourierImage(generator, settings.image_size, torch.device("cpu"))
    warp = RandomAffine(generator, settings.steps, settings.jitter, settings.scale, settings.rotate, "cpu")
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam(image.parameters(), lr=settings.lr)
    index = torch.tensor([unit])
    with LayerCapture(model.module, [layer], stop=False) as capture:
        for step in range(settings.steps):
            optimizer.zero_grad()
            acts = capture((warp(image(), step) - mean) / std).activations[layer.name]
            (-METHODS[method](acts, index).sum()).backward()
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-units", type=int, default=32, help="units per conv layer, batched side")
    parser.add_argument("--loop-units", type=int, default=2, help="units per conv layer, loop side")
    parser.add_argument("--method", default="iam", choices=sorted(METHODS))
    args = parser.parse_args()

    model = load_model("vgg16", "random", seed=0)
    settings = OptimSettings(  # rescue_rounds 0: the same steps for every unit on both sides
        steps=args.steps, image_size=args.image_size, batch_size=args.batch_units, rescue_rounds=0
    )
    conv_layers = [layer for layer in model.layers if layer.kind == "conv"]
    print(
        f"VGG16 conv layers, {args.method}, {args.steps} steps, {args.image_size} px, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"{'layer':<8} {'units':>5} {'batched u/s':>12} {'loop u/s':>10} {'ratio':>7}")
    totals = {"batched": [0.0, 0], "loop": [0.0, 0]}
    full_sweep = {"batched": 0.0, "loop": 0.0}
    for layer in conv_layers:
        units = list(range(args.batch_units))
        started = time.perf_counter()
        optimize_units(model, layer, units, args.method, settings, progress=False)
        batched_s = time.perf_counter() - started
        started = time.perf_counter()
        for unit in range(args.loop_units):
            loop_one_unit(model, layer, unit, args.method, settings)
        loop_s = time.perf_counter() - started
        rates = {"batched": len(units) / batched_s, "loop": args.loop_units / loop_s}
        for side, seconds, n in (("batched", batched_s, len(units)), ("loop", loop_s, args.loop_units)):
            totals[side][0] += seconds
            totals[side][1] += n
            full_sweep[side] += layer.n_units / rates[side]
        print(
            f"{layer.name:<8} {layer.n_units:>5} {rates['batched']:>12.2f} {rates['loop']:>10.2f} "
            f"{rates['batched'] / rates['loop']:>6.1f}x"
        )
    overall = {side: n / seconds for side, (seconds, n) in totals.items()}
    print(
        f"{'overall':<8} {'':>5} {overall['batched']:>12.2f} {overall['loop']:>10.2f} "
        f"{overall['batched'] / overall['loop']:>6.1f}x  (same units per layer)"
    )
    print(
        f"full conv sweep ({sum(layer.n_units for layer in conv_layers)} units) projected: batched "
        f"{full_sweep['batched']:.0f} s, loop {full_sweep['loop']:.0f} s, ratio "
        f"{full_sweep['loop'] / full_sweep['batched']:.1f}x"
    )


if __name__ == "__main__":
    main()
