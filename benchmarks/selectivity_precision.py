"""The selectivity pass in bf16 against fp32: images per second, overhead over a bare forward of the same
precision, and how far the selectivity of every unit moves; first, what this CPU's convolutions give in each.

0. One 3x3 convolution of VGG's conv3 shape (batch 32, 256 -> 256 channels, 16x16, channels-last), forward
   and forward + input gradient, fp32 against bf16 autocast, interleaved, best of --repeats: GFLOP/s.

VGG16 (random weights, seed 0, 10 classes) at 64 px, all 16 layers captured (`accumulate_class_sums`:
hooks, spatial means, float64 class sums), on the same in-memory batches of generated class-structured
images (repsub.data.synthetic, cached under --cache). Four sides, interleaved, best of --repeats: a bare
forward (`model(x)` on channels-last input, as the pass runs it) and the pass, each in fp32 and under bf16
autocast. Prints images/s, the ratio bf16 / fp32 of the pass (goal >= 1.5 on this CPU), each pass's
overhead over its bare forward (goal <= 1.10) and the Spearman correlation of per-unit selectivity between
the two precisions, per layer (goal >= 0.99).

    .venv/bin/python -m benchmarks.selectivity_precision [--images 512] [--image-size 64] [--repeats 5]
                                                         [--max-load 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from benchmarks.machine import load_average, wait_for_quiet
from repsub.capture.precision import Precision, as_input, prepare_for_speed
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.core.selectivity import selectivity_index
from repsub.data.sources import ImageFolderSource
from repsub.data.synthetic import make_image_folder
from repsub.models import IMAGENET_MEAN, IMAGENET_STD, load_model

PRECISIONS = {name: Precision(name, name, "benchmark") for name in ("fp32", "bf16")}


def in_memory_batches(cache: Path, images: int, image_size: int, batch_size: int) -> list:
    classes = 10
    root = cache / f"selectivity-{images}-{image_size}"
    if not (root / "complete").is_file():
        make_image_folder(root / "images", classes, -(-images // classes), size=round(image_size * 1.15))
        (root / "complete").write_text("")
    source = ImageFolderSource(root / "images", image_size, IMAGENET_MEAN, IMAGENET_STD)
    return list(source.batches(batch_size, indices=range(min(images, len(source))), workers=2))


def conv_rates(repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 256, 3, 3, generator=generator).contiguous(memory_format=torch.channels_last)
    images = torch.randn(32, 256, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
    flops = 2 * 32 * 256 * 256 * 9 * 16 * 16

    def run(precision: Precision, backward: bool) -> float:
        x = images.detach().requires_grad_(backward)
        started = time.perf_counter()
        with precision.autocast("cpu"):
            out = torch.nn.functional.conv2d(x, weight, padding=1)
        if backward:
            out.float().sum().backward()
        return time.perf_counter() - started

    best = {}
    for round_ in range(repeats + 1):  # the first round builds oneDNN's kernels
        for backward in (False, True):
            for name, precision in PRECISIONS.items():
                seconds = run(precision, backward)
                if round_:
                    best[name, backward] = min(best.get((name, backward), float("inf")), seconds)
    print(
        f"0. conv 3x3, 32x256x16x16 -> 256, channels-last, {torch.get_num_threads()} threads, "
        f"best of {repeats}"
    )
    for backward, what in ((False, "forward"), (True, "forward + input gradient")):
        rates = {name: flops * (2 if backward else 1) / best[name, backward] / 1e9 for name in PRECISIONS}
        print(
            f"  {what:<26} fp32 {rates['fp32']:6.0f} GFLOP/s, bf16 {rates['bf16']:6.0f} GFLOP/s: "
            f"bf16 / fp32 {rates['bf16'] / rates['fp32']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="best of N (the machine may be shared)")
    parser.add_argument("--cache", default="/tmp/repsub-bench")
    parser.add_argument(
        "--max-load", type=float, default=None, help="wait until the load average is below this"
    )
    args = parser.parse_args()
    batches = in_memory_batches(Path(args.cache), args.images, args.image_size, args.batch_size)
    n = sum(len(labels) for _, labels in batches)
    model = load_model("vgg16", "random", seed=0, num_classes=10)
    channels_last = prepare_for_speed(model.module, "cpu")

    def bare(precision: Precision):
        with torch.no_grad():
            for images, _ in batches:
                with precision.autocast("cpu"):
                    model.module(as_input(images, channels_last))

    accumulators = {}

    def selectivity_pass(precision: Precision):
        accumulators[precision.used] = accumulate_class_sums(
            model, model.layers, batches, 10, progress=False, precision=precision
        )

    sides = {f"{kind} {name}": (run, p) for name, p in PRECISIONS.items() for kind, run in
             (("bare forward", bare), ("selectivity pass", selectivity_pass))}  # fmt: skip
    for run, precision in sides.values():  # warm-up: oneDNN builds its kernels
        run(precision)
    timings = {side: float("inf") for side in sides}
    load = wait_for_quiet(args.max_load)
    conv_rates(args.repeats)
    for _ in range(args.repeats):  # interleaved, so every side sees the same machine load
        for side, (run, precision) in sides.items():
            started = time.perf_counter()
            run(precision)
            timings[side] = min(timings[side], time.perf_counter() - started)
    print(
        f"\n1-3. VGG16 at {args.image_size} px, all {len(model.layers)} layers, {n} images in batches of "
        f"{args.batch_size}, torch threads {torch.get_num_threads()}, best of {args.repeats}, load average "
        f"{load:.2f} before and {load_average():.2f} after"
    )
    for side, seconds in timings.items():
        print(f"  {side:<24} {seconds:7.3f} s  {n / seconds:8.1f} img/s")
    for name in PRECISIONS:
        ratio = timings[f"selectivity pass {name}"] / timings[f"bare forward {name}"]
        print(f"  overhead {name} (pass / bare forward of the same precision): {ratio:.3f}  (goal <= 1.10)")
    speedup = timings["selectivity pass fp32"] / timings["selectivity pass bf16"]
    print(f"  selectivity pass bf16 / fp32 images/s: {speedup:.2f}x  (goal >= 1.5)")
    rhos = []
    for layer in model.layers:
        a = selectivity_index(accumulators["fp32"].class_means(layer.name)).selectivity
        b = selectivity_index(accumulators["bf16"].class_means(layer.name)).selectivity
        both = np.isfinite(a) & np.isfinite(b)
        rhos.append((stats.spearmanr(a[both], b[both]).statistic, layer.name, np.abs(a - b)[both].max()))
    worst = min(rhos)
    print(
        f"  selectivity Spearman bf16 vs fp32: min {worst[0]:.4f} ({worst[1]}), median "
        f"{np.median([r[0] for r in rhos]):.4f}  (goal >= 0.99); largest |difference| "
        f"{max(r[2] for r in rhos):.4f}"
    )
    print("  per layer: " + ", ".join(f"{name} {rho:.3f}" for rho, name, _ in rhos))


if __name__ == "__main__":
    main()
