"""What the optimization fix costs: time per step with the default own term (hybrid: the pre-activation is
read too, through a hook on the layer's ReLU) against the plain post-ReLU objective (today's forward).

    .venv/bin/python -m benchmarks.own_term_cost

Same units, seeds, settings and precision on both sides; the two are interleaved, best of `--repeats`,
and the ratio hybrid/post printed per case (goal: at most ~1.10). Recorded in docs/performance.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from repsub.models import load_model
from repsub.optimize import OptimSettings, optimize_units

CASES = [  # (model, layer, image size, units)
    ("vgg16", "conv3_3", 64, 32),
    ("vgg16", "conv5_3", 64, 32),
    ("vgg16", "fc7", 64, 32),
    ("shallow_cnn", "conv4", 32, 128),
]


def seconds_per_step(model, layer, units, settings) -> float:
    started = time.perf_counter()
    optimize_units(model, layer, units, "iam", settings, progress=False)
    return (time.perf_counter() - started) / settings.steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {args.precision}, IAM")
    print(
        f"{'model':<12} {'layer':<8} {'px':>4} {'units':>5} {'post s/step':>12} {'hybrid s/step':>14} {'ratio':>6}"
    )
    models = {}
    for name, layer_name, size, count in CASES:
        model = models.setdefault(name, load_model(name, "random", seed=0))
        layer = model.layer(layer_name)
        base = OptimSettings(  # rescue_rounds 0: the cost of a step, not of the rounds a silent unit adds
            steps=args.steps, image_size=size, batch_size=count, precision=args.precision, rescue_rounds=0
        )
        units = list(range(count))
        seconds_per_step(model, layer, units, base)  # warm-up (allocations, channels-last conversion)
        best = {"post": float("inf"), "hybrid": float("inf")}
        for _ in range(args.repeats):
            for own in best:
                best[own] = min(best[own], seconds_per_step(model, layer, units, replace(base, own_term=own)))
        print(
            f"{name:<12} {layer_name:<8} {size:>4} {count:>5} {best['post']:>12.4f} {best['hybrid']:>14.4f} "
            f"{best['hybrid'] / best['post']:>6.3f}"
        )


if __name__ == "__main__":
    main()
