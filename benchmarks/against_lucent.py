"""repsub's batched AM/IAM against lucent rendering the same units one at a time, with its own defaults.

Both sides: torchvision VGG16 with the same seeded random weights (`load_model("vgg16", "random", seed=0)`,
one copy each, so repsub's channels-last conversion never touches lucent's), the same layer (read after its
ReLU: lucent's `features_15` is repsub's `conv3_3`), steps and image size, 2 torch threads.

- **lucent** (torch-lucent 0.1.8) renders one unit per `render_vis` call with its own defaults:
  `param.image(S)` (FFT spectrum with decorrelated colour, sd 0.01), its `standard_transforms` (pad 12
  with grey, jitter 8, scale 0.9-1.1, rotate -10..10 degrees, jitter 4), ImageNet normalization, Adam at
  lr 0.05, and, for images under 224 px, its bilinear upsampling to 224 before the network ("lucent
  defaults"). Also measured with `fixed_image_size=S`, the network at the image's own size ("lucent at
  S": the same arithmetic per step as repsub's, lucent's cheapest faithful setting). AM is lucent's
  `objectives.channel`; IAM is a lucent objective written the lucent way (`wrap_objective`): the
  channel's spatial mean minus the mean of the other channels' spatial means. lucent always runs the
  whole network (no stop at the layer) in fp32. Favouring lucent: its model's weights are frozen
  (lucent's README passes a trainable model, whose weight gradients it then computes for nothing), and
  the forward hooks it leaves on every module after each call are removed between units. lucent is timed
  on `--lucent-units` units (spread over the N) and its mean time per unit is scaled to N.
- **repsub**: the N units batched (`--batch-size`, default 64), in fp32 and in bf16, as its Python API
  (`optimize_units`) and as the whole `repsub visualize` command in a subprocess (interpreter start-up,
  imports, model build, optimization, PNG encoding, writing the run).

Rounds are interleaved (every side once per round) and the best of `--repeats` rounds is kept; with
`--max-load L` each round waits until the machine's load average is below L (it is shared). Prints wall
and CPU seconds per unit (CPU: this process's, or the command's, user + system time), the ratios
lucent / repsub, and bf16-vs-fp32 equivalence of repsub's results on the same units and seeds (Spearman
of per-unit RS, mean RS difference, failure rates, objective). Before the cases, the command's start-up
phases in a fresh interpreter.

Install lucent for the benchmark only (torch and torchvision stay as they are):

    .venv/bin/pip install 'kornia==0.4.1' ipython decorator   # the `bench` extra: what lucent imports
    .venv/bin/pip install --no-deps torch-lucent==0.1.8

torch-lucent's metadata also pulls pytest-mock, coverage, coveralls, scikit-learn and future, which its
rendering never imports: hence --no-deps. kornia stays at lucent's pin (<= 0.4.1; it imports and runs with
torch 2.14); IPython is imported by `lucent.optvis.render` for notebook display.

    .venv/bin/python -m benchmarks.against_lucent                  # the full matrix (long: ~1 h here)
    .venv/bin/python -m benchmarks.against_lucent --layers conv3_3 --sizes 64 --methods am   # the goal's case
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from benchmarks.machine import wait_for_quiet
from repsub.models import load_model
from repsub.optimize import OptimSettings, optimize_units
from repsub.optimize.render import unit_seed

INSTALL = (
    "lucent is not installed: .venv/bin/pip install 'kornia==0.4.1' ipython decorator && "
    ".venv/bin/pip install --no-deps torch-lucent==0.1.8 (see this file's docstring)"
)


def import_lucent():
    try:
        from lucent.optvis import objectives, param, render
    except ImportError as err:
        raise SystemExit(f"{INSTALL}\n({err})") from None
    return objectives, param, render


def lucent_objective(objectives, layer: str, unit: int, method: str):
    if method == "am":
        return objectives.channel(layer, unit)

    @objectives.wrap_objective()
    def inter_unit(layer, n_channel):
        def inner(model):
            means = model(layer).mean(dim=(2, 3))  # [1, N] spatial means, as repsub reads a conv unit
            others = (means.sum(dim=1) - means[:, n_channel]) / (means.shape[1] - 1)
            return -(means[:, n_channel] - others).mean()

        return inner

    return inter_unit(layer, unit)


def lucent_seconds_per_unit(module, layer: str, units: list[int], method: str, size: int, steps: int,
                            at_size: bool) -> tuple[float, float]:  # fmt: skip
    """Mean (wall, CPU) seconds per unit of lucent's render_vis, one unit per call."""
    objectives, param, render = import_lucent()
    total, cpu = 0.0, 0.0
    for unit in units:
        seed = unit_seed(0, layer, unit) % 2**32
        torch.manual_seed(seed)
        np.random.seed(seed)  # lucent's transforms draw from NumPy's global generator
        started, cpu_started = time.perf_counter(), time.process_time()
        render.render_vis(
            module, lucent_objective(objectives, layer, unit, method), param_f=lambda: param.image(size),
            thresholds=(steps,), show_image=False, progress=False, fixed_image_size=size if at_size else None,
        )  # fmt: skip
        total += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        for m in module.modules():  # lucent never removes its hooks: drop them so the next unit is not slowed
            m._forward_hooks.clear()
    return total / len(units), cpu / len(units)


def cli_seconds(
    layer: str, units: int, method: str, size: int, steps: int, precision: str, batch: int
) -> float:
    """(wall, CPU) seconds of the whole `repsub visualize` command, writing a run into a fresh directory."""
    out = Path(tempfile.mkdtemp(prefix="repsub-bench-run-"))
    command = [
        sys.executable, "-m", "repsub.cli", "visualize", "--model", "vgg16", "--weights", "random",
        "--seed", "0",
        "--method", method, "--layers", layer, "--units", f"0-{units - 1}", "--steps", str(steps),
        "--image-size", str(size), "--batch-size", str(batch), "--precision", precision, "--device", "cpu",
        "--out", str(out / "run"), "--no-progress", "--rescue-rounds", "0",
    ]  # fmt: skip
    try:
        before, started = children_cpu(), time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return time.perf_counter() - started, children_cpu() - before
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"repsub visualize failed:\n{err.stderr}") from None
    finally:
        shutil.rmtree(out, ignore_errors=True)


STARTUP = """
import json, time
marks = [("interpreter", time.perf_counter())]
import torch
marks.append(("import torch", time.perf_counter()))
import repsub.api
from repsub.models import get_spec, load_model, state_dict_sha256
from repsub.precision import resolve_precision
marks.append(("import repsub.api (torchvision, pyarrow...)", time.perf_counter()))
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(0)
    module = get_spec("vgg16").build(1000, None)
marks.append(("VGG16 built, random init (all 138 M parameters)", time.perf_counter()))
state_dict_sha256(module.state_dict())
marks.append(("SHA-256 of the weights", time.perf_counter()))
load_model("vgg16", "random", seed=0)
marks.append(("load_model (the two above, the catalog probe)", time.perf_counter()))
resolve_precision("auto", "cpu")
marks.append(("precision auto (bf16 probe)", time.perf_counter()))
print(json.dumps(marks))
"""


def startup_breakdown() -> None:
    """Where the fixed seconds of a `repsub visualize` command go, phase by phase, in a fresh interpreter."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", STARTUP], check=True, capture_output=True, text=True)
    marks = json.loads(done.stdout.strip().splitlines()[-1])
    say(f"\nstart-up phases of a fresh interpreter (wall s), load average {os.getloadavg()[0]:.2f}:")
    previous = started
    for name, at in marks:
        say(f"  {name:<48} {at - previous:6.2f}")
        previous = at


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Case:
    layer: str
    size: int
    method: str
    best: dict = field(default_factory=dict)  # side -> best (wall, CPU) seconds per unit
    results: dict = field(default_factory=dict)  # precision -> repsub OptimResult (API)
    loads: list = field(default_factory=list)  # load average at the start of each round

    def keep(self, side: str, wall: float, cpu: float) -> None:
        old = self.best.get(side, (float("inf"), float("inf")))
        self.best[side] = (min(old[0], wall), min(old[1], cpu))


def measure(case: Case, model, lucent_module, args) -> None:
    layer = model.layer(case.layer)
    lucent_layer = layer.module.replace(".", "_")  # lucent names modules by their path, "_"-joined
    units = list(range(args.units))
    lucent_units = units[:: max(1, args.units // args.lucent_units)][: args.lucent_units]
    for _ in range(args.repeats):
        case.loads.append(wait_for_quiet(args.max_load))
        for at_size, side in ((False, "lucent defaults"), (True, "lucent at S")):
            case.keep(side, *lucent_seconds_per_unit(
                lucent_module, lucent_layer, lucent_units, case.method, case.size, args.steps, at_size,
            ))  # fmt: skip
        for precision in args.precisions:
            settings = OptimSettings(  # rescue_rounds 0: lucent takes the same steps for every unit
                steps=args.steps,
                image_size=case.size,
                batch_size=args.batch_size,
                precision=precision,
                rescue_rounds=0,
            )
            started, cpu_started = time.perf_counter(), time.process_time()
            case.results[precision] = optimize_units(
                model, layer, units, case.method, settings, run_seed=0, device="cpu", progress=False
            )
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            case.keep(f"repsub {precision} API", wall / len(units), cpu / len(units))
            if args.cli:
                wall, cpu = cli_seconds(case.layer, args.units, case.method, case.size, args.steps, precision,
                                        args.batch_size)  # fmt: skip
                case.keep(f"repsub {precision} command", wall / len(units), cpu / len(units))


def equivalence(fp32, bf16) -> str:
    """bf16 against fp32 on the same units and seeds: RS rank agreement, mean RS, failures, objective."""
    both = np.isfinite(fp32.rs) & np.isfinite(bf16.rs)
    rho = stats.spearmanr(fp32.rs[both], bf16.rs[both]).statistic if both.sum() > 2 else float("nan")
    failed = [(r.status != "ok").mean() for r in (fp32, bf16)]
    objective = np.median(bf16.objective_final) / np.median(fp32.objective_final)
    return (
        f"Spearman RS {rho:.3f} (goal >= 0.95), mean RS fp32 {np.nanmean(fp32.rs):.4f} bf16 "
        f"{np.nanmean(bf16.rs):.4f} (|diff| {abs(np.nanmean(fp32.rs) - np.nanmean(bf16.rs)):.4f}, "
        "goal <= 0.01), "
        f"failures fp32 {failed[0]:.1%} bf16 {failed[1]:.1%}, median objective bf16/fp32 {objective:.3f}"
    )


def report(case: Case, args) -> None:
    title = f"{case.layer} {case.method} {case.size} px, {args.steps} steps"
    say(
        f"\n{title}: seconds per unit, best of {args.repeats} (lucent: mean of {args.lucent_units} units; "
        f"repsub: {args.units} units), load average at each round's start: "
        + ", ".join(f"{x:.2f}" for x in case.loads)
    )
    say(f"  {'':<24} {'wall s/unit':>12} {'CPU s/unit':>11}")
    for side, (wall, cpu) in case.best.items():
        say(f"  {side:<24} {wall:12.3f} {cpu:11.3f}")
    for precision in args.precisions:
        for how in ("API", "command"):
            ours = case.best.get(f"repsub {precision} {how}")
            if ours is None:
                continue
            ratios = [case.best[side][0] / ours[0] for side in ("lucent defaults", "lucent at S")]
            say(
                f"  ratio lucent / repsub {precision} {how:<8} (wall): defaults {ratios[0]:6.1f}x, "
                f"at S {ratios[1]:6.1f}x"
            )
    if {"fp32", "bf16"} <= case.results.keys():
        say(f"  bf16 vs fp32: {equivalence(case.results['fp32'], case.results['bf16'])}")


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="conv3_3,conv5_3")
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--methods", default="am,iam")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--units", type=int, default=64, help="units repsub optimizes (per case)")
    parser.add_argument(
        "--lucent-units", type=int, default=3, help="units lucent renders (scaled to --units)"
    )
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="rounds, interleaved; the best is kept")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip the whole-command timing")
    parser.add_argument(
        "--max-load",
        type=float,
        default=None,
        help="before each round, wait until the load average is below this",
    )
    args = parser.parse_args()
    args.precisions = args.precisions.split(",")
    import_lucent()  # fail early, with the install line
    model = load_model("vgg16", "random", seed=0)
    lucent_module = load_model(
        "vgg16", "random", seed=0
    ).module  # its own copy: NCHW weights, as lucent has them
    say(
        f"VGG16 (random weights, seed 0), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f} at the start"
    )
    started = time.perf_counter()
    if args.cli:
        startup_breakdown()
    for layer in args.layers.split(","):
        for size in map(int, args.sizes.split(",")):
            for method in args.methods.split(","):
                case = Case(layer, size, method)
                measure(case, model, lucent_module, args)
                report(case, args)
    say(f"\ntotal {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
