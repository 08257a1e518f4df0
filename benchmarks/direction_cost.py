"""What measuring directions costs against measuring units (issue 18's goals), in one run, side by side.

1. AM (and IAM) step: seconds per optimization step for a batch of units against the same number of directions
   of a `pca` basis (K = C, centred linear encoder) and of a TopK `sae` basis (K = 4C) at the same layer, same
   settings and seeds (goal: a direction's AM step at most 1.3x a unit's). A step is timed by itself, from
   one step's end to the next (a progress bar that keeps the clock), and `step` is the median over every
   step of --repeats interleaved runs: on a shared machine a median of many steps is steadier than the
   difference of two whole runs' best times, which moved by 20% between runs. Beside it, `run`: a whole
   --steps run over its steps (it adds the start and final reads, where every direction is encoded). A
   unit's AM takes the own-unit shortcut (only the batch's own filters of a ReLU(conv) layer); a direction
   reads every channel.
2. The selectivity pass over all 16 layers of VGG16: units only, against units and a `pca` basis of conv3_3,
   conv4_3, conv5_3 and fc7 read in the same pass (a StackedReadout per layer: one encode, one accumulator),
   and a bare forward (goal: the pass with the basis at most 1.10x the units-only pass).

VGG16 with seeded random weights at 64 px (bases fitted on the pass's own generated images, PCA exactly from
float64 sums), fp32, interleaved rounds, best of --repeats.

    .venv/bin/python -m benchmarks.direction_cost [--steps 16] [--repeats 3] [--images 256] [--max-load 2] [--am-only]
        [--layers conv3_3 ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

from benchmarks.machine import best_of_interleaved, load_average, wait_for_quiet
from benchmarks.selectivity_precision import in_memory_batches
from repsub.capture.precision import Precision, as_input, prepare_for_speed
from repsub.capture.reader import LayerCapture
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.core.bases.pca import PcaSums, pca_basis
from repsub.core.bases.sae import sae_basis
from repsub.core.readout import StackedReadout, UnitReadout
from repsub.models import load_model
from repsub.optimize import OptimSettings, UnitProgress, optimize_units

FP32 = Precision("fp32", "fp32", "benchmark")
AM_CASES = [("conv3_3", 32), ("conv5_3", 32), ("fc7", 32)]  # (layer, targets per batch)
PASS_BASIS_LAYERS = ["conv3_3", "conv4_3", "conv5_3", "fc7"]


def layer_vectors(model, layer, batches) -> torch.Tensor:
    """The layer's activation vector at every position of every image: [P, C] (what a basis is fitted on)."""
    parts = []
    with torch.no_grad(), LayerCapture(model.module, [layer], reduce=None) as capture:
        for images, _ in batches:
            values = capture(images).activations[layer.name]
            parts.append(values.movedim(1, -1).reshape(-1, values.shape[1]) if values.dim() == 4 else values)
    return torch.cat(parts)


def fitted_bases(model, layer, batches, sae_epochs: int) -> dict:
    vectors = layer_vectors(model, layer, batches)
    sums = PcaSums(vectors.shape[1]).add(vectors)
    sample = vectors[torch.randperm(len(vectors), generator=torch.Generator().manual_seed(0))[:4096]]
    return {
        "pca": pca_basis(layer.name, sums, vectors.shape[1], sample=sample),
        "sae": sae_basis(
            layer.name,
            sample,
            4 * vectors.shape[1],
            top_k=max(1, vectors.shape[1] // 16),
            seed=0,
            epochs=sae_epochs,
        ),  # fmt: skip
    }


class StepClock(UnitProgress):
    """A disabled progress bar that keeps the time of every optimization step's end."""

    def __init__(self, total_units: int, steps: int):
        super().__init__(total_units, steps, enabled=False)
        self.ends: list[float] = []

    def step(self, units_in_batch: int) -> None:
        self.ends.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        """Each step's seconds but the first's (its interval would start before the start read)."""
        return [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]


def timed_steps(model, layer, targets, method, settings, readout) -> tuple[list[float], int]:
    """One optimization of `targets`: the seconds of each of its steps (but the first), and how many targets
    ended silent (status no_response)."""
    clock = StepClock(len(targets), settings.steps)
    result = optimize_units(model, layer, targets, method, settings, progress=clock, readout=readout)
    return clock.step_seconds(), int((result.status == "no_response").sum())


def record_run(steps: dict, silent: dict, side: str, *optimization) -> None:
    """One optimization (timed_steps' arguments): its steps' seconds added to steps[side], silent[side] set."""
    step_seconds, silent[side] = timed_steps(*optimization)
    steps[side].extend(step_seconds)


def am_steps(model, batches, args) -> None:
    """Per side, --repeats runs of --steps steps, interleaved: `step` is the median of their steps' own times
    (the goal's measure); `run` the best run's seconds over its steps (the start and final reads of every
    direction included)."""
    n = args.steps
    print(f"\n1. AM/IAM seconds per step, 64 px, fp32, {args.repeats} interleaved runs of {n} steps: `step` = "
          f"the median of the steps' own times, `run` = the best whole run over {n}")  # fmt: skip
    print(f"  {'layer':<8} {'method':<6} {'unit step':>10} {'pca step':>9} {'sae step':>9} {'pca/unit':>9} "
          f"{'sae/unit':>9} {'run: pca/unit':>14} {'sae/unit':>9} {'silent sae':>11}")  # fmt: skip
    for layer_name, count in AM_CASES:
        if args.layers and layer_name not in args.layers:
            continue
        layer = model.layer(layer_name)
        bases = fitted_bases(model, layer, batches[:2], args.sae_epochs)
        settings = (
            OptimSettings(  # rescue_rounds 0: the cost of a step, not of the rounds a silent target adds
                steps=n, image_size=64, batch_size=count, precision="fp32", rescue_rounds=0
            )
        )
        targets = list(range(count))
        for method in ("am", "iam"):
            sides = {"unit": None, **bases}
            for readout in sides.values():  # warm-up
                timed_steps(model, layer, targets, method, replace(settings, steps=2), readout)
            steps = {side: [] for side in sides}
            silent = {}
            runs = {side: partial(record_run, steps, silent, side, model, layer, targets, method, settings, readout)
                    for side, readout in sides.items()}  # fmt: skip
            best = best_of_interleaved(runs, args.repeats)
            step = {side: statistics.median(times) for side, times in steps.items()}
            run = {side: best[side] / n for side in sides}
            print(
                f"  {layer_name:<8} {method:<6} {step['unit']:>10.4f} {step['pca']:>9.4f} {step['sae']:>9.4f} "
                f"{step['pca'] / step['unit']:>9.3f} {step['sae'] / step['unit']:>9.3f} "
                f"{run['pca'] / run['unit']:>14.3f} {run['sae'] / run['unit']:>9.3f} "
                f"{silent['sae']:>7}/{count}"
            )
    print(
        "  goal: a direction's AM step at most 1.3x a unit's (pca/unit, sae/unit of `step` on the am rows);"
    )
    print(f"  silent sae: its directions still silent after {n} steps (they climb the top-k margin)")


def selectivity_passes(model, batches, args) -> None:
    readouts = {}
    for name in PASS_BASIS_LAYERS:
        layer = model.layer(name)
        pca = fitted_bases(model, layer, batches[:2], 1)["pca"]
        readouts[name] = StackedReadout([UnitReadout(layer.n_units, name), pca])
    channels_last = prepare_for_speed(model.module, "cpu")

    def bare():
        with torch.no_grad():
            for images, _ in batches:
                model.module(as_input(images, channels_last))

    def units_only():
        accumulate_class_sums(model, model.layers, batches, 10, progress=False, precision=FP32)

    def with_pca():
        accumulate_class_sums(
            model, model.layers, batches, 10, progress=False, precision=FP32, readouts=readouts
        )

    sides = {"bare forward": bare, "selectivity pass, units": units_only, "units + pca (4 layers)": with_pca}
    for run in sides.values():
        run()
    timings = best_of_interleaved(sides, args.repeats)
    n = sum(len(labels) for _, labels in batches)
    print(f"\n2. the selectivity pass, VGG16 all {len(model.layers)} layers, {n} images of 64 px, best of "
          f"{args.repeats}")  # fmt: skip
    for side, seconds in timings.items():
        print(f"  {side:<28} {seconds:7.3f} s  {n / seconds:7.1f} img/s")
    ratio = timings["units + pca (4 layers)"] / timings["selectivity pass, units"]
    print(f"  units + pca / units only: {ratio:.3f}  (goal <= 1.10); units only / bare forward: "
          f"{timings['selectivity pass, units'] / timings['bare forward']:.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sae-epochs", type=int, default=2, help="SAE training epochs (not timed)")
    parser.add_argument("--max-load", type=float, default=None)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "repsub-bench")
    parser.add_argument("--am-only", action="store_true", help="the AM/IAM steps only (part 1)")
    parser.add_argument(
        "--layers", nargs="+", choices=[name for name, _ in AM_CASES], help="part 1 at these layers only"
    )
    args = parser.parse_args(argv)
    model = load_model("vgg16", "random", seed=0, num_classes=10)
    batches = in_memory_batches(args.cache, args.images, 64, 32)
    load = wait_for_quiet(args.max_load)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    am_steps(model, batches, args)
    if not args.am_only:
        selectivity_passes(model, batches, args)
    print(f"\nload average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
