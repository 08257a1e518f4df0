"""The paper's findings on real data: scikit-learn's handwritten digits, the paper's shallow CNN and MLP.

CIFAR-10 and ImageNet cannot be downloaded here, but scikit-learn ships 1,797 real 8x8 handwritten
digits (10 classes) inside its wheel. This benchmark turns them into ImageFolders at 32 px (a stratified
80/20 split), trains the paper's shallow CNN and MLP with `repsub train` (random crops, no flips), runs
the selectivity pass on the held-out digits and AM + IAM for every unit of every layer, then prints, per
model, layer and method: alive units, failed optimizations, mean RS, Spearman rho of RS against
selectivity with its bootstrap CI (the report's statistics: failed and dead units excluded), and the
paper's four findings checked as statements:

1. rho(RS, selectivity) > 0 in conv layers, and falling with depth;
2. the fc layer before the logits: high selectivity, low RS;
3. MLP: RS similar across layers;
4. IAM gives lower RS than AM.

and, with every unit's importance by ablation (zeroed, accuracy drop on the held-out digits), the paper's
thesis: (5) units with high RS (replaceable) are the less important ones, rho(RS, importance) < 0; (6)
selective units are not the important ones, rho(selectivity, importance) never above 0.

    .venv/bin/python -m benchmarks.paper_findings                    # the full run (~20 min on 2 cores)
    .venv/bin/python -m benchmarks.paper_findings --own-terms hybrid,post   # also the unfixed optimization

Needs scikit-learn (the `bench` and `test` extras). Results are recorded in docs/science.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import repsub
from repsub.commands.train import train_classifier
from repsub.models import load_model
from repsub.optimize import OptimSettings

IMAGE_SIZE = 32
MODELS = ("shallow_cnn", "mlp")


@dataclass(frozen=True)
class Settings:
    out: Path = Path("runs/paper-findings")
    steps: int = 128
    epochs: dict = field(default_factory=lambda: {"shallow_cnn": 30, "mlp": 30})
    own_terms: tuple[str, ...] = ("hybrid",)
    subset: int | None = None  # digits used (stratified), None: all 1,797
    units: str | None = None  # units of every layer, None: all
    resamples: int = 1000
    seed: int = 0


def write_digits(
    root: Path, size: int = IMAGE_SIZE, seed: int = 0, subset: int | None = None
) -> tuple[Path, Path]:
    """train/ and val/ ImageFolders of the digits as RGB PNGs (grey levels 0-16 scaled to 0-255, resized
    bilinearly to `size`), split 80/20 stratified by class; written once (a marker records completion)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    marker = root / "complete.json"
    train, val = root / "train", root / "val"
    wanted = {"size": size, "seed": seed, "subset": subset}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return train, val
    digits = load_digits()
    images, labels = digits.images, digits.target
    if subset is not None:
        images, _, labels, _ = train_test_split(
            images, labels, train_size=subset, stratify=labels, random_state=seed
        )
    parts = train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=seed)
    for folder, pictures, classes in ((train, parts[0], parts[2]), (val, parts[1], parts[3])):
        for index, (picture, label) in enumerate(zip(pictures, classes, strict=True)):
            grey = Image.fromarray(np.uint8(np.round(picture * 255 / 16)), mode="L")
            path = folder / f"digit_{label}" / f"{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grey.resize((size, size), Image.BILINEAR).convert("RGB").save(path)
    marker.write_text(json.dumps(wanted))
    return train, val


def run_model(model: str, settings: Settings, train: Path, val: Path, own_term: str) -> dict:
    """Train (once per model), then selectivity and AM/IAM into RUN = out/<model>-<own_term>."""
    weights = settings.out / f"{model}.pt"
    facts_path = settings.out / f"{model}.json"
    if not weights.is_file():
        trained = train_classifier(
            model, train, weights, image_size=IMAGE_SIZE, epochs=settings.epochs[model], seed=settings.seed,
            augment="crop", val_data=val, progress=False,
        )  # fmt: skip
        facts_path.write_text(json.dumps({k: v for k, v in trained.items() if k != "classes"}))
    facts = json.loads(facts_path.read_text())
    loaded = load_model(model, weights=str(weights), device="cpu")
    run = settings.out / f"{model}-{own_term}"
    started = time.monotonic()
    repsub.selectivity(
        model=loaded, data=val, out=run, image_size=IMAGE_SIZE, batch_size=128, device="cpu", workers=0,
        progress=False, precision="fp32",
    )  # fmt: skip
    optim = OptimSettings(steps=settings.steps, image_size=IMAGE_SIZE, batch_size=128, own_term=own_term)
    for method in ("am", "iam"):
        repsub.visualize(
            model=loaded, method=method, out=run, settings=optim, units=settings.units, seed=settings.seed,
            device="cpu", progress=False,
        )  # fmt: skip
    optimized = time.monotonic()
    repsub.importance(
        model=loaded, data=val, out=run, units=settings.units, image_size=IMAGE_SIZE, batch_size=128,
        device="cpu", workers=0, progress=False,
    )  # fmt: skip
    return {
        "run": run, "seconds": optimized - started, "importance_seconds": time.monotonic() - optimized, **facts,
    }  # fmt: skip


# ------------------------------------------------------------------ reading the results


@dataclass
class LayerResult:
    model: str
    layer: str
    depth: int
    read: str
    method: str
    alive: int  # units with a selectivity row that are not dead
    failed: int  # of those, units whose optimization ended with status != ok
    mean_selectivity: float
    mean_rs: float  # over the units that enter the statistics
    rho: float
    ci: tuple[float, float]
    n: int


def layer_results(model: str, run_dir: Path, resamples: int) -> list[LayerResult]:
    """The report's statistics of a run (repsub.analysis), one row per layer and method."""
    run = repsub.open_run(run_dir)
    stats = run.stats(resamples=resamples).to_pylist()
    frame = run.frame(methods=["am", "iam"]).to_pylist()
    out = []
    for row in stats:
        if row["method"] is None:
            continue
        part = [u for u in frame if u["layer"] == row["layer"] and u["method"] == row["method"]]
        alive = [u for u in part if u["dead"] is False]
        out.append(LayerResult(
            model=model, layer=row["layer"], depth=row["depth"], read=row["read"], method=row["method"],
            alive=len(alive), failed=sum(u["status"] != "ok" for u in alive),
            mean_selectivity=row["mean_selectivity"], mean_rs=row["mean_rs"], rho=row["spearman_rho"],
            ci=(row["rho_ci_low"], row["rho_ci_high"]), n=row["n_included"],
        ))  # fmt: skip
    return out


@dataclass
class ImportanceResult:
    """One layer's rho of importance (zero ablation, held-out digits) against RS or selectivity."""

    model: str
    layer: str
    depth: int
    read: str
    measure: str  # accuracy_drop (the paper's importance) or loss_increase
    against: str  # rs_am, rs_iam, selectivity
    baseline_accuracy: float
    mean_importance: float
    rho: float
    ci: tuple[float, float]
    n: int


def importance_results(model: str, run_dir: Path, resamples: int) -> list[ImportanceResult]:
    """The report's importance statistics of a run (repsub.analysis.importance_stats), zero ablation."""
    rows = repsub.open_run(run_dir).importance_stats(resamples=resamples).to_pylist()
    return [
        ImportanceResult(
            model=model,
            layer=row["layer"],
            depth=row["depth"],
            read=row["read"],
            measure=row["measure"],
            against=row["against"],
            baseline_accuracy=row["baseline_accuracy"],
            mean_importance=row["mean_importance"],
            rho=row["spearman_rho"],
            ci=(row["rho_ci_low"], row["rho_ci_high"]),
            n=row["n_included"],
        )  # fmt: skip
        for row in rows
        if row["ablation"] == "zero"
    ]


def paired_iam_below_am(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Per layer: (units whose IAM RS < AM RS, units whose IAM RS > AM RS), over units ok in both."""
    run = repsub.open_run(run_dir)
    by_key = {(u["layer"], u["method"], u["unit"]): u for u in run.frame(methods=["am", "iam"]).to_pylist()}
    counts: dict[str, list[int]] = {}
    for (layer, method, unit), am in by_key.items():
        iam = by_key.get((layer, "iam", unit))
        if method != "am" or iam is None or am["status"] != "ok" or iam["status"] != "ok" or am["dead"]:
            continue
        pair = counts.setdefault(layer, [0, 0])
        pair[0] += iam["rs"] < am["rs"]
        pair[1] += iam["rs"] > am["rs"]
    return {layer: (below, above) for layer, (below, above) in counts.items()}


# ------------------------------------------------------------------ the findings as statements


@dataclass
class Finding:
    number: int
    statement: str
    holds: bool | None  # None: not decidable on these results
    evidence: str


def _rank_correlation(x: list[float], y: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(x, y).statistic) if len(x) >= 3 else math.nan


def check_findings(results: list[LayerResult], pairs: dict[str, tuple[int, int]]) -> list[Finding]:
    cnn = [r for r in results if r.model == "shallow_cnn"]
    mlp = [r for r in results if r.model == "mlp" and r.read != "logits"]
    findings = []
    for method in ("am", "iam"):
        conv = [r for r in cnn if r.method == method and r.layer.startswith("conv")]
        rhos = [r.rho for r in conv]
        positive = all(rho > 0 for rho in rhos)
        trend = _rank_correlation([r.depth for r in conv], rhos)
        findings.append(Finding(
            1, f"{method.upper()}: rho(RS, selectivity) > 0 in every conv layer and falling with depth",
            positive and trend < 0,
            f"rho by depth {', '.join(f'{r.layer} {r.rho:+.2f}' for r in conv)}; rank correlation of rho "
            f"with depth {trend:+.2f}",
        ))  # fmt: skip
    fc = [r for r in cnn if r.read != "logits" and not r.layer.startswith("conv")]
    conv_all = [r for r in cnn if r.layer.startswith("conv")]
    if fc:
        last = max(r.depth for r in fc)
        top = [r for r in fc if r.depth == last]
        high = all(r.mean_selectivity > max(c.mean_selectivity for c in conv_all) for r in top)
        low = all(r.mean_rs < min(c.mean_rs for c in conv_all if c.method == r.method) for r in top)
        findings.append(Finding(
            2, f"{top[0].layer} (the fc layer before the logits): higher selectivity and lower RS than every conv layer",
            high and low,
            f"{top[0].layer} selectivity {top[0].mean_selectivity:.2f} vs conv <= "
            f"{max(c.mean_selectivity for c in conv_all):.2f}; RS "
            + ", ".join(f"{r.method.upper()} {r.mean_rs:.3f}" for r in top)
            + " vs conv >= " + ", ".join(
                f"{m.upper()} {min(c.mean_rs for c in conv_all if c.method == m):.3f}" for m in ("am", "iam")
            ),
        ))  # fmt: skip
    spreads = {m: [r.mean_rs for r in mlp if r.method == m] for m in ("am", "iam")}
    similar = all(spread and max(spread) - min(spread) <= 0.1 for spread in spreads.values())
    findings.append(Finding(
        3, "MLP: mean RS similar across hidden layers (range at most 0.1)", similar,
        "; ".join(f"{m.upper()} " + ", ".join(f"{v:.3f}" for v in vals) for m, vals in spreads.items()),
    ))  # fmt: skip
    lower = [(layer, below, above) for layer, (below, above) in pairs.items()]
    decided = [(below, above) for _, below, above in lower if below + above]  # 0:0: every pair tied
    findings.append(Finding(
        4, "IAM gives lower RS than AM (paired, units ok in both: more IAM < AM than IAM > AM in every layer "
        "where they differ)",
        all(below > above for below, above in decided) if decided else None,
        ", ".join(f"{layer} {below}:{above}" for layer, below, above in lower),
    ))  # fmt: skip
    return findings


def check_thesis(importance: list[ImportanceResult]) -> list[Finding]:
    """The paper's thesis on importance (the unit zeroed), over the hidden layers of both models: (5)
    replaceable units (high RS) are the less important ones; (6) selective units are not the important ones.
    Each for the accuracy drop and for the loss increase."""

    def listed(rows: list[ImportanceResult]) -> str:
        return ", ".join(f"{r.model} {r.layer} {r.rho:+.2f} [{r.ci[0]:+.2f}, {r.ci[1]:+.2f}]" for r in rows)

    findings = []
    # accuracy_drop is the paper's importance; on a few hundred images most single ablations change no
    # prediction (all tied: rho undefined), so loss_increase, continuous, is checked too.
    for measure in ("accuracy_drop", "loss_increase"):
        hidden = [
            r for r in importance if r.measure == measure and r.read != "logits" and not math.isnan(r.rho)
        ]
        for against in ("rs_am", "rs_iam"):
            rows = [r for r in hidden if r.against == against]
            below = sum(r.ci[1] < 0 for r in rows)
            findings.append(Finding(
                5, f"{against.removeprefix('rs_').upper()}, {measure}: rho(RS, importance) < 0 in every hidden "
                f"layer where defined (high RS, less important); CI below 0 in {below} of {len(rows)}",
                all(r.rho < 0 for r in rows) if rows else None, listed(rows),
            ))  # fmt: skip
        rows = [r for r in hidden if r.against == "selectivity"]
        above = [r for r in rows if r.ci[0] > 0]
        findings.append(Finding(
            6, f"{measure}: rho(selectivity, importance) is not positive in any hidden layer (its CI never "
            f"above 0): selective units are not the important ones; CI above 0 in {len(above)} of {len(rows)}",
            not above if rows else None, listed(rows),
        ))  # fmt: skip
    return findings


# ------------------------------------------------------------------ printing


def format_results(results: list[LayerResult]) -> str:
    head = f"{'model':<12} {'layer':<6} {'method':<6} {'alive':>5} {'failed':>6} {'sel':>6} {'mean RS':>8} {'n':>5} {'rho':>7}  95% CI"
    lines = [head]
    for r in results:
        ci = "" if math.isnan(r.ci[0]) else f"[{r.ci[0]:+.2f}, {r.ci[1]:+.2f}]"
        lines.append(
            f"{r.model:<12} {r.layer:<6} {r.method:<6} {r.alive:>5} {r.failed:>6} {r.mean_selectivity:>6.3f} "
            f"{r.mean_rs:>8.3f} {r.n:>5} {r.rho:>+7.3f}  {ci}"
        )
    return "\n".join(lines)


def format_importance(importance: list[ImportanceResult]) -> str:
    """Per model and layer: baseline accuracy, mean importance and rho against RS (AM, IAM) and selectivity,
    for each measure."""
    head = f"{'model':<12} {'layer':<6} {'measure':<14} {'base acc':>8} {'mean':>8} {'n':>5}  " + "  ".join(
        f"{'rho vs ' + a:<27}" for a in ("rs_am", "rs_iam", "selectivity")
    )
    lines = [head]
    keys = dict.fromkeys((r.model, r.layer, r.measure) for r in importance)
    for model, layer, measure in keys:
        rows = {r.against: r for r in importance if (r.model, r.layer, r.measure) == (model, layer, measure)}
        first = next(iter(rows.values()))
        cells = []
        for against in ("rs_am", "rs_iam", "selectivity"):
            r = rows.get(against)
            cells.append(
                f"{'':<27}" if r is None or math.isnan(r.rho)
                else f"{r.rho:+.2f} [{r.ci[0]:+.2f}, {r.ci[1]:+.2f}] n={r.n:<5}"
            )  # fmt: skip
        lines.append(
            f"{model:<12} {layer:<6} {measure:<14} {first.baseline_accuracy:>8.3f} {first.mean_importance:>8.4f} "
            f"{first.n:>5}  " + "  ".join(cells)
        )
    return "\n".join(lines)


def run(settings: Settings) -> dict:
    settings.out.mkdir(parents=True, exist_ok=True)
    train, val = write_digits(settings.out / "digits", seed=settings.seed, subset=settings.subset)
    report: dict = {}
    for own_term in settings.own_terms:
        results, importance, pairs, facts = [], [], {}, {}
        for model in MODELS:
            done = run_model(model, settings, train, val, own_term)
            facts[model] = done
            results += layer_results(model, done["run"], settings.resamples)
            importance += importance_results(model, done["run"], settings.resamples)
            if model == "shallow_cnn":
                pairs = paired_iam_below_am(done["run"])
        report[own_term] = {
            "results": results, "importance": importance, "facts": facts,
            "findings": check_findings(results, pairs) + check_thesis(importance),
        }  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/paper-findings")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of each model (default 30)")
    parser.add_argument("--own-terms", default="hybrid", help="comma-separated: hybrid, post, pre")
    parser.add_argument("--subset", type=int, default=None, help="use this many digits (default all 1,797)")
    parser.add_argument("--units", default=None, help="units of every layer (default all)")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    settings = Settings(
        out=Path(args.out), steps=args.steps, epochs={m: args.epochs for m in MODELS},
        own_terms=tuple(args.own_terms.split(",")), subset=args.subset, units=args.units,
        resamples=args.resamples,
    )  # fmt: skip
    report = run(settings)
    for own_term, part in report.items():
        print(f"\n=== own term: {own_term} ===")
        for model, facts in part["facts"].items():
            print(
                f"{model}: train accuracy {facts['train_accuracy']:.3f}, held-out accuracy "
                f"{facts['val_accuracy']:.3f}; selectivity + AM + IAM in {facts['seconds']:.0f} s, importance "
                f"in {facts['importance_seconds']:.0f} s"
            )
        print(format_results(part["results"]))
        print("\nimportance (zero ablation, held-out digits), Spearman rho with its 95% bootstrap CI:")
        print(format_importance(part["importance"]))
        for finding in part["findings"]:
            verdict = {True: "HOLDS", False: "DOES NOT HOLD", None: "UNDECIDED"}[finding.holds]
            print(f"({finding.number}) {verdict}: {finding.statement}\n    {finding.evidence}")


if __name__ == "__main__":
    main()
