"""The `repsub` command. Each subcommand parses its options and calls the Python API.

Building the parser imports nothing heavy (no torch, ray or pyarrow): each command function imports what it
runs, so that `repsub --help` and `repsub COMMAND --help` start at once (tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from repsub.analysis.commands import add_report_parser, add_summary_parser, cmd_report, cmd_summary
from repsub.core.bases.kinds import FITTED_KINDS
from repsub.errors import RepsubError, UsageError
from repsub.optimize.settings import PRECISIONS, OptimSettings, declared, option_name, precision_help

# Copies of the library's choices, so that the help needs no torch; tests/test_cli_startup.py checks them
# against repsub.capture.reader.REDUCTIONS and repsub.optimize.METHODS. (The optimization settings' options come from
# their declaration, repsub.optimize.settings, which is light.)
REDUCTIONS = ("mean", "max", "center")
METHODS = ("am", "iam")
PREPARE_HELP = "write an ImageFolder (or a flat folder with --labels) as an FFCV .beton"
# `repsub demo`'s time, measured on a 2-core CPU (336-364 s of CPU in three runs); the README says the same.
DEMO_TIME = "6 CPU-minutes"
WEIGHTS_HELP = (
    "random (seeded by --seed), imagenet (the model's ImageNet default), DEFAULT or a torchvision weights "
    "name such as IMAGENET1K_V1 (read from torchvision's cache), or a state_dict path (default: random)"
)


def _layers_arg(text: str | None, option: str = "--layers") -> list[str] | None:
    from repsub.selection import parse_layer_names

    return parse_layer_names(text, option)


def _add_model_args(parser: argparse.ArgumentParser, from_run: bool = False) -> None:
    """The model options; `from_run`: a command that extends an existing run takes what is not given from it
    (repsub.commands.extend)."""
    models = "shallow_cnn, mlp or a torchvision model (repsub layers --list-models)"
    if from_run:
        parser.add_argument(
            "--model", default=None, help=f"{models} (default: the run's, re-created from --out)"
        )
        parser.add_argument(
            "--weights", default=None, help=WEIGHTS_HELP.replace("(default: random)", "(default: the run's "
            "when --model is the run's, else random)"),
        )  # fmt: skip
        parser.add_argument(
            "--seed", type=int, default=None,
            help="seed for random weights and per-unit seeds (default: the run's, else 0)",
        )  # fmt: skip
    else:
        parser.add_argument("--model", required=True, help=models)
        parser.add_argument("--weights", default="random", help=WEIGHTS_HELP)
        parser.add_argument(
            "--seed", type=int, default=0, help="seed for random weights and per-unit seeds (default 0)"
        )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    layers = "the run's, else all; `all`: every layer" if from_run else "all"
    parser.add_argument("--layers", default=None, help=f"comma-separated layer names (default: {layers})")
    parser.add_argument("--out", required=True, help="run directory (or s3:// URI) to write into")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_write_args(parser)


def _add_write_args(parser: argparse.ArgumentParser) -> None:
    """The options of every command that writes into a run (README, "Run integrity")."""
    parser.add_argument(
        "--allow-mixed",
        action="store_true",
        help="accept rows of another meaning (other data or image size...) beside the run's; recorded",
    )
    parser.add_argument(
        "--force-unlock",
        action="store_true",
        help="remove the run's lock left by a command that died (check that none is running)",
    )


def _add_basis_arg(parser: argparse.ArgumentParser, several: bool = False) -> None:
    parser.add_argument(
        "--basis",
        default=None,
        help="measure the directions of this basis of the run instead of the units (default: unit, the units)"
        + (
            "; several separated by commas (unit,pca,sae) are measured in one pass over the data"
            if several
            else ""
        ),
    )


def _add_reduce_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reduce",
        default=None,
        choices=REDUCTIONS,
        help="how a conv channel's map becomes one activation, for selectivity, the objectives and RS "
        "alike (default: the run's, else mean)",
    )


def _add_precision_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=precision_help(what))


def _add_settings_args(parser: argparse.ArgumentParser, settings: type[OptimSettings], reused: bool) -> None:
    """The options of the optimization settings declared with a help (repsub.optimize.settings), those the
    command takes from the run (`reused`: default None, the run's) or the others (default: the setting's)."""
    for name, default, declared_as in declared(settings):
        if declared_as.help is None or declared_as.reused != reused:
            continue
        text = declared_as.help
        if reused and "(default" not in text:
            text += f" (default: the run's, else {default})"
        kind = None if declared_as.choices or isinstance(default, str) else type(default)
        parser.add_argument(option_name(name), type=kind, default=None if reused else default,
                            choices=declared_as.choices, help=text)  # fmt: skip


def build_parser(
    command: str | None = None, settings: type[OptimSettings] = OptimSettings
) -> argparse.ArgumentParser:
    """The parser of every command. `prepare`'s options live with it (repsub.data.prepare, which imports
    torch): they are added only when `command` is "prepare"; otherwise it is listed with its help line.
    `settings`: the optimization settings whose options `visualize` takes."""
    parser = argparse.ArgumentParser(prog="repsub", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "layers",
        help="list a model's unit layers and unit counts",
        description="A model's catalog: each layer's name, units, kind, how it is read and its module, from a "
        "forward on the meta device (no weights are loaded, nothing is downloaded); --modules lists every "
        "module --layers also takes, --list-models the models.",
    )
    p.add_argument(
        "--model", default=None, help="model name (required unless --list-models, which lists them)"
    )
    p.add_argument("--weights", default="random", help=WEIGHTS_HELP)
    p.add_argument(
        "--modules",
        action="store_true",
        help="list every module whose output holds units (what --layers also accepts), not only the catalog",
    )
    p.add_argument("--list-models", action="store_true", help="list the models --model accepts")
    p.add_argument(
        "--json", action="store_true", help='print [{"name", "units", "module", "kind", "read"}, ...] (JSON)'
    )

    if command == "prepare":
        from repsub.data.prepare import add_prepare_parser

        add_prepare_parser(sub)
    else:
        sub.add_parser("prepare", help=PREPARE_HELP)

    p = sub.add_parser(
        "selectivity",
        help="class selectivity of every unit over an ImageFolder or a .beton file",
        description="Class selectivity of every unit of --layers over --data, in one pass, written into the "
        "run --out. Into an existing run, the model, weights, seed, layers and image size not given are "
        "the run's.",
    )
    _add_model_args(p, from_run=True)
    p.add_argument(
        "--data",
        required=True,
        help="ImageFolder directory (one folder per class) or FFCV .beton file (local or s3://), or demo "
        "(the demo's generated held-out images, made on first use)",
    )
    _add_basis_arg(p, several=True)
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size S (default: the run's, else the model's: 224 for vgg16, 32 for the paper's models)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    _add_reduce_arg(p)
    _add_precision_arg(p, "the forward's")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    p.add_argument(
        "--save-activations",
        default=None,
        help="comma-separated layers (among --layers) whose per-image activations go to RUN/activations/ "
        "(default: none)",
    )
    p.add_argument(
        "--exemplars",
        type=int,
        default=16,
        metavar="K",
        help="keep every unit's K top and K bottom images (RUN/exemplars/, thumbnails in RUN/images/); "
        "0: none (default 16)",
    )
    p.add_argument(
        "--quantile-k",
        type=int,
        default=200,
        metavar="K",
        help="sketch every unit's activation over the data (KLL of parameter K: rank error about 1.3%% at 200, "
        "0.17%% at 2000) and store its quantiles in RUN/quantiles/; 0: none (default 200)",
    )
    p.add_argument(
        "--bands",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a second pass over the data (the band pass): per unit and band of its activation between its "
        "quantiles (below 25%%, 25-50%%, 50-75%%, 75-90%%, 90-99%%, 99-99.9%%, top 0.1%%), the images per "
        "class and a seeded sample of them, in RUN/bands/ (default: on with quantiles)",
    )
    p.add_argument(
        "--band-sample",
        type=int,
        default=16,
        metavar="R",
        help="image indices sampled per unit and band (seeded; thumbnails in RUN/images/); 0: none (default 16)",
    )

    p = sub.add_parser(
        "visualize",
        help="AM or IAM images, layer activations and RS for units",
        description="For each unit of --layers (--units of each): an image optimized to drive it (am) or to "
        "drive it above the layer's other units (iam), the layer's activations on it and its RS, written "
        "into the run --out. Into an existing run, the model, weights, seed, layers and optimization "
        "settings not given are the run's (those of its latest visualize or sweep).",
    )
    _add_model_args(p, from_run=True)
    p.add_argument("--method", required=True, choices=sorted(METHODS), help="am or iam (required)")
    p.add_argument("--units", default=None, help="unit ranges, e.g. 0-15 or 0,3,8-11 (default: all)")
    _add_basis_arg(p)
    _add_settings_args(p, settings, reused=True)
    _add_reduce_arg(p)
    _add_settings_args(p, settings, reused=False)

    p = sub.add_parser(
        "train",
        help="train the shallow CNN or the MLP on an ImageFolder (for small experiments)",
        description="Train the paper's shallow CNN or MLP from scratch with Adam; writes its state_dict, "
        "usable as --weights PATH by every command.",
    )
    p.add_argument(
        "--model", required=True, choices=["shallow_cnn", "mlp"], help="shallow_cnn or mlp (required)"
    )
    p.add_argument("--data", required=True, help="ImageFolder directory of training images (required)")
    p.add_argument(
        "--out", required=True, help="state_dict file to write (written only when training completes)"
    )
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the data (default 5)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights and the shuffling (default 0)"
    )
    p.add_argument(
        "--augment",
        default="crop_flip",
        help="crop_flip (random crops and horizontal flips), crop (crops only: for digits, text and other "
        "orientation-bearing data), none (default crop_flip)",
    )
    p.add_argument(
        "--val-data",
        default=None,
        help="ImageFolder of held-out images: report their accuracy (default: none)",
    )

    p = sub.add_parser(
        "interpretability",
        help="the simulated 2AFC interpretability index of every unit, from the run's exemplars",
        description="For every unit with exemplars (repsub selectivity --exemplars K): the mean probability, over "
        "seeded trials, that a simulated observer tells a top exemplar from a bottom one by its similarity to "
        "9 top and 9 bottom reference exemplars (Klindt et al. 2023); 0.5 is chance. --variant central: the "
        "same task between the sampled images of the unit's 50-75% and 25-50% bands (the run's bands table). "
        "Written to RUN/interpretability/, one block per layer and similarity holding its variants.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (or URI) with exemplars")
    p.add_argument("--similarity", default="labels",
                   help="labels (same class or not), pixels (negative L2 of the thumbnails), features (cosine of "
                   "--feature-layer's mean-pooled activations) or lpips (negative LPIPS distance) (default labels)")  # fmt: skip
    p.add_argument("--variant", default="extremal",
                   help="extremal (top vs bottom exemplars), central (the 50-75%% vs the 25-50%% band's sampled "
                   "images: needs the run's bands) or both (default extremal)")  # fmt: skip
    p.add_argument("--feature-layer", default=None, help="--similarity features: the layer whose activations "
                   "(conv maps mean-pooled) are compared")  # fmt: skip
    p.add_argument(
        "--feature-model",
        default=None,
        help="--similarity features: a model by name (default: the run's own, re-created)",
    )
    p.add_argument("--feature-weights", default=None,
                   help="--feature-model's weights: imagenet, random, a torchvision enum name or a path (default random)")  # fmt: skip
    p.add_argument("--lpips-net", default="alex", help="--similarity lpips: the backbone, alex or vgg (default alex)")  # fmt: skip
    p.add_argument("--lpips-weights", default="imagenet",
                   help="--similarity lpips: the backbone's weights: imagenet (from the torch hub cache), a path "
                   "to its state dict, or random:SEED (the plumbing only) (default imagenet)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="images per forward of features/lpips (default 64)")  # fmt: skip
    p.add_argument("--device", default="auto", help="features/lpips forwards: cpu, cuda... (default auto)")
    p.add_argument(
        "--layers", default=None, help="comma-separated layers (default: every layer with exemplars)"
    )
    p.add_argument("--trials", type=int, default=20, help="trials per unit (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trials' draws (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_write_args(p)

    p = sub.add_parser(
        "importance",
        help="unit importance by ablation: the accuracy drop when a unit's output is zeroed",
        description="For every unit of --layers: the model's accuracy on a seeded, class-balanced subset of "
        "--data with the unit's whole output (a conv channel's map, a neuron) set to 0 (or its mean), "
        "against the intact model's; written to RUN/importance/. The data's classes must be the model's. "
        "Into an existing run, the model, layers and image size are the run's unless given.",
    )
    _add_model_args(p, from_run=True)
    p.add_argument(
        "--data", required=True, help="labelled ImageFolder directory or .beton file (local or s3://)"
    )
    p.add_argument("--units", default=None, help="unit ranges, e.g. 0-15 or 0,3,8-11 (default: all)")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="a seeded, class-balanced subset of this many images (default: all)",
    )
    p.add_argument(
        "--ablation",
        default="zero",
        choices=["zero", "mean"],
        help="set the unit to 0, or to its mean over the images (default zero)",
    )
    _add_basis_arg(p)
    p.add_argument(
        "--image-size", type=int, default=None, help="input size S (default: the model's, 224 for vgg16)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")

    p = sub.add_parser(
        "sweep",
        help="a whole sweep from a YAML config, sharded on a Ray cluster (resumable)",
        description="The selectivity pass and the AM/IAM optimization of every unit a YAML config names "
        "(repsub/sweep/config.py documents its keys), sharded on Ray workers, committed shard by shard (a "
        "rerun skips what is done), then the per-layer summary. Relative paths in the config are read from "
        "the current directory. Try: repsub sweep --config jobs/configs/demo.yaml",
    )
    from repsub.sweep.command import add_sweep_arguments  # the flags of `python -m jobs.sweep` too

    add_sweep_arguments(p, address_default=None)

    _add_basis_parser(sub)
    add_summary_parser(sub)
    add_report_parser(sub)

    p = sub.add_parser(
        "demo",
        help=f"the whole method on generated data, on CPU, offline, in about {DEMO_TIME}",
        description="Generates (once, cached) a 10-class ImageFolder, trains the paper's shallow CNN on it, "
        "measures selectivity on held-out images, optimizes AM and IAM images for all 522 units, prints the "
        f"per-layer summary and writes the HTML report: about {DEMO_TIME} (3 to 6 minutes on 2 idle cores).",
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--steps", type=int, default=48, help="optimization steps (default 48)")
    p.add_argument(
        "--cache",
        default=os.environ.get("REPSUB_CACHE", str(Path.home() / ".cache" / "repsub")),
        help="where generated data is kept (default $REPSUB_CACHE or ~/.cache/repsub)",
    )
    for action in sub._choices_actions:
        _say_defaults(sub.choices[action.dest], action.help)
    return parser


def _add_basis_parser(sub) -> None:
    """`repsub basis fit|list`: bases of a layer's activation space stored in a run (repsub.commands.basis)."""
    p = sub.add_parser(
        "basis",
        help="fit bases of layers' activation spaces (pca, ica, nmf, kmeans, sae...) into a run, or list them",
        description="A basis of a layer: K directions and an encoder from the layer's activation vector at one "
        "position to K responses. `fit` samples activation vectors from the run's data, fits one basis per "
        "layer and stores it in the run with its metrics; `list` prints the run's bases.",
    )
    verbs = p.add_subparsers(dest="basis_command", required=True, metavar="{fit,list}")
    fit = verbs.add_parser("fit", help="fit a basis on each of --layers and store it in the run")
    fit.add_argument("run", help="the run (directory or s3:// URI): its model, data and image size are used")
    fit.add_argument("--layers", default=None, help="comma-separated layer names (default: the run's)")
    fit.add_argument("--kind", required=True, choices=FITTED_KINDS, help="the kind of basis (required)")
    fit.add_argument(
        "--size",
        type=int,
        default=None,
        help="K, its directions (default: the layer's C; sae: --expansion x C; vectors: the file's)",
    )
    fit.add_argument("--name", default=None, help="the name it is stored under (default: the kind)")
    fit.add_argument(
        "--data", default=None, help="ImageFolder or .beton (default: the run's selectivity data)"
    )
    fit.add_argument("--positions", type=int, default=16, help="positions sampled per image (default 16)")
    fit.add_argument(
        "--images",
        type=int,
        default=None,
        help="a seeded, class-balanced subset of this many images (default: all)",
    )
    fit.add_argument(
        "--seed", type=int, default=None, help="seed of the sampling and the solver (default: the run's)"
    )
    fit.add_argument(
        "--expansion", type=int, default=4, help="sae: K = expansion x C unless --size (default 4)"
    )
    fit.add_argument(
        "--top-k", type=int, default=None, help="sae: active latents per position (default C / 8)"
    )
    fit.add_argument(
        "--sae-epochs", type=int, default=20, help="sae: passes over the sampled vectors (default 20)"
    )
    fit.add_argument("--vectors", default=None, help="kind vectors: a .npy or .pt file of K x C directions")
    fit.add_argument(
        "--no-stability", action="store_true", help="skip the second fit (seed + 1) that measures stability"
    )
    fit.add_argument("--replace", action="store_true", help="refit a name the run holds with another fit")
    fit.add_argument("--image-size", type=int, default=None, help="input size S (default: the run's)")
    fit.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    fit.add_argument("--workers", type=int, default=2, help="data loading processes (default 2)")
    fit.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    fit.add_argument(
        "--force-unlock",
        action="store_true",
        help="remove the run's lock left by a command that died (check that none is running)",
    )
    listing = verbs.add_parser("list", help="the run's bases with their metrics")
    listing.add_argument("run", help="the run (directory or s3:// URI)")
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")


def _say_defaults(command: argparse.ArgumentParser, help_line: str) -> None:
    """A command without a description of its own shows its help line; an option whose help does not say its
    default gets it said (argparse's ArgumentDefaultsHelpFormatter would repeat those already said)."""
    command.description = command.description or f"{help_line[0].upper()}{help_line[1:]}."
    for action in command._actions:
        if not action.option_strings or action.required or action.help in (None, argparse.SUPPRESS):
            continue
        if action.nargs != 0 and "default" not in action.help:  # nargs 0: a flag (store_true...)
            action.help += f" (default: {'none' if action.default is None else action.default})"


def _command(argv: list[str] | None) -> str | None:
    """The command named on the command line: its first word that is not an option."""
    return next((word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        for name, value in vars(args).items():  # a URI carrying credentials is refused before any use or echo
            if isinstance(value, str) and "://" in value:  # (check_location checks URIs only)
                from repsub.runstore.storage import check_location

                check_location(value, name.replace("_", "-"))
        code = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # a reader that went away shows here, in the handler below, not at exit
        return code
    except RepsubError as err:
        print(f"repsub {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`repsub layers | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


def cmd_layers(args) -> None:
    from repsub.models import catalog_index

    if not args.list_models and not args.model:
        raise UsageError("give --model NAME (or --list-models)")
    # The shipped index answers the common questions without importing torch; the rest is built live.
    index = catalog_index.load() if args.weights == "random" and not args.modules else None
    if args.list_models:
        _list_models(index["models"] if index else catalog_index.model_rows(), args.json)
        return
    if index and args.model in index["catalogs"]:
        rows = index["catalogs"][args.model]
    else:
        from repsub.models import model_catalog

        found = model_catalog(args.model, weights=args.weights)
        rows = catalog_index.layer_rows(found.readable_modules() if args.modules else found.layers)
    if args.json:
        keys = ("name", "units", "module", "kind", "read")
        print(json.dumps([{key: row[key] for key in keys} for row in rows]))
        return
    table = [("layer", "units", "kind", "read", "module")]
    table += [(r["name"], str(r["units"]), r["kind"], r["read_text"], r["module"]) for r in rows]
    w = [max(len(row[i]) for row in table) for i in range(4)]
    for name, units, kind, read, module in table:
        print(f"{name:<{w[0]}}  {units:>{w[1]}}  {kind:<{w[2]}}  {read:<{w[3]}}  {module}")
    print(f"{'total':<{w[0]}}  {sum(r['units'] for r in rows):>{w[1]}}")


def _list_models(models: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(models))
        return
    width = max(len(m["name"]) for m in models)
    for m in models:
        print(f"{m['name']:<{width}}  {m['family']:<9}  {m['image_size']:>4} px  {', '.join(m['weights'])}")


def cmd_selectivity(args) -> None:
    from repsub.commands.selectivity import selectivity

    table = selectivity(
        model=args.model,
        weights=args.weights,
        data=args.data,
        out=args.out,
        image_size=args.image_size,
        layers=_layers_arg(args.layers),
        batch_size=args.batch_size,
        reduce=args.reduce,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        save_activations=_layers_arg(args.save_activations, "--save-activations"),
        exemplars=args.exemplars,
        quantile_k=args.quantile_k,
        bands=args.bands,
        band_sample=args.band_sample,
        progress=not args.no_progress,
        precision=args.precision,
        allow_mixed=args.allow_mixed,
        force_unlock=args.force_unlock,
        basis=args.basis,
    )
    print(f"wrote selectivity of {table.num_rows} units to {args.out}")


def cmd_visualize(args) -> None:
    from repsub.commands.visualize import visualize

    table = visualize(
        model=args.model,
        weights=args.weights,
        method=args.method,
        layers=_layers_arg(args.layers),
        units=args.units,
        out=args.out,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        reduce=args.reduce,
        allow_mixed=args.allow_mixed,
        force_unlock=args.force_unlock,
        basis=args.basis,
        **_given(args),  # the settings not given: the run's
    )
    print(f"wrote {args.method} results of {table.num_rows} units to {args.out}")


def _given(args, settings: type[OptimSettings] = OptimSettings) -> dict:
    """The optimization settings given on the command line (an option left out, None, takes the run's or the
    default; one not taken from the run always has a value)."""
    names = [name for name, _, declared_as in declared(settings) if declared_as.help is not None]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_importance(args) -> None:
    from repsub.commands.importance import importance

    table = importance(
        model=args.model,
        weights=args.weights,
        data=args.data,
        out=args.out,
        layers=_layers_arg(args.layers),
        units=args.units,
        images=args.images,
        ablation=args.ablation,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress,
        allow_mixed=args.allow_mixed,
        force_unlock=args.force_unlock,
        basis=args.basis,
    )
    print(f"wrote importance ({args.ablation} ablation) of {table.num_rows} units to {args.out}")


def cmd_interpretability(args) -> None:
    import numpy as np

    from repsub.commands.interpretability import interpretability

    table = interpretability(
        args.run,
        similarity=args.similarity,
        layers=_layers_arg(args.layers),
        variant=args.variant,
        feature_layer=args.feature_layer,
        feature_model=args.feature_model,
        feature_weights=args.feature_weights,
        lpips_net=args.lpips_net,
        lpips_weights=args.lpips_weights,
        batch_size=args.batch_size,
        device=args.device,
        trials=args.trials,
        seed=args.seed,
        progress=not args.no_progress,
        allow_mixed=args.allow_mixed,
        force_unlock=args.force_unlock,
    )
    index = table.column("index").to_numpy()
    mean = np.nanmean(index) if np.isfinite(index).any() else float("nan")
    print(f"wrote the {args.similarity} interpretability index of {table.num_rows} units ({args.variant}) to "
          f"{args.run} (mean {mean:.3f})")  # fmt: skip


def cmd_basis(args) -> None:
    from repsub.commands.basis import fit_basis, list_bases

    if args.basis_command == "list":
        rows = list_bases(args.run).to_pylist()
        if args.json:
            print(json.dumps(rows))
            return
        print(f"{'layer':<12} {'name':<12} {'kind':<8} {'K':>6} {'C':>6} {'fve':>7} {'L0':>8} {'dead':>6} "
              f"{'stability':>9}  hash")  # fmt: skip
        for r in rows:
            print(f"{r['layer']:<12} {r['name']:<12} {r['kind']:<8} {r['size']:>6} {r['n_channels']:>6} "
                  f"{r['fve']:>7.4f} {r['mean_l0']:>8.2f} {r['dead']:>6} {r['stability']:>9.4f}  {r['hash'][:12]}")  # fmt: skip
        print(f"{len(rows)} basis(es); unit (the identity) is every layer's")
        return
    table = fit_basis(
        args.run, layers=_layers_arg(args.layers), kind=args.kind, size=args.size, name=args.name,
        data=args.data, positions=args.positions, seed=args.seed, expansion=args.expansion, top_k=args.top_k,
        vectors=args.vectors, images=args.images, image_size=args.image_size, batch_size=args.batch_size,
        device=args.device, workers=args.workers, stability=not args.no_stability, replace=args.replace,
        sae_epochs=args.sae_epochs, force_unlock=args.force_unlock,
    )  # fmt: skip
    for r in table.to_pylist():
        print(f"{r['layer']}/{r['name']}: {r['kind']} K={r['size']} fve {r['fve']:.4f}, mean L0 {r['mean_l0']:.2f}, "
              f"dead {r['dead']}, stability {r['stability']:.4f}, hash {r['hash'][:12]}")  # fmt: skip
    print(f"wrote {table.num_rows} basis(es) to {args.run}")


def cmd_train(args) -> None:
    from repsub.commands.train import train_classifier

    result = train_classifier(
        args.model,
        args.data,
        args.out,
        image_size=args.image_size,
        epochs=args.epochs,
        seed=args.seed,
        augment=args.augment,
        val_data=args.val_data,
    )
    held_out = f", held-out accuracy {result['val_accuracy']:.3f}" if "val_accuracy" in result else ""
    print(
        f"wrote {args.out}: train accuracy {result['train_accuracy']:.3f}{held_out}, "
        f"final loss {result['final_loss']:.3f}"
    )


def cmd_sweep(args) -> None:
    from repsub.sweep.command import run_sweep_command

    print(run_sweep_command(args))


def cmd_demo(args) -> None:
    from repsub.analysis.report import write_report
    from repsub.analysis.summary import format_summary
    from repsub.commands.demo import run_demo

    started = time.monotonic()
    rows = run_demo(out=args.out, cache=args.cache, steps=args.steps)
    print(format_summary(rows))
    print(f"report: {write_report(args.out)}")
    print(f"demo run written to {args.out} in {time.monotonic() - started:.0f} s")


def cmd_prepare(args) -> None:
    from repsub.data.prepare import cmd_prepare as run_prepare

    run_prepare(args)


COMMANDS = {
    "basis": cmd_basis,
    "importance": cmd_importance,
    "interpretability": cmd_interpretability,
    "layers": cmd_layers,
    "selectivity": cmd_selectivity,
    "visualize": cmd_visualize,
    "train": cmd_train,
    "sweep": cmd_sweep,
    "summary": cmd_summary,
    "report": cmd_report,
    "prepare": cmd_prepare,
    "demo": cmd_demo,
}

if __name__ == "__main__":
    sys.exit(main())
