"""The automated interpretability index on real data (issue 19's science): the digits, the paper's CNN and MLP.

Uses the runs of benchmarks.paper_findings (trained models; selectivity with exemplars, quantiles and bands on the
held-out digits; AM, IAM and importance of every unit), made here when absent. Computes the simulated 2AFC index
(Klindt et al. 2023) of every unit, extremal (top vs bottom exemplars) and central (the 50-75% band's images vs
the 25-50% band's), under three similarities: `labels` (same digit), `pixels` (negative L2 of the 32 px
images) and `features` (cosine of the model's own penultimate hidden layer: fc5 of the CNN, fc4 of the MLP).
`lpips` is left out: its backbone's ImageNet weights cannot be downloaded here, and random weights say nothing.

Prints per model, layer, similarity and variant: units, mean index, and Spearman rho of the index against AM RS
and against selectivity (over units alive, ok in AM, with a finite index), then statements:

(1) the extremal index is above chance (0.5) in every layer under every similarity;
(2) more selective units are more interpretable: rho(index, selectivity) > 0 in most layers (labels);
(3) more replaceable units (high RS) are less interpretable: rho(index, RS) < 0 in most layers (labels);
(4) the central index is lower than the extremal one (mid-range activations code less clearly).

    .venv/bin/python -m benchmarks.index_findings [--out runs/paper-findings] [--steps 128]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from scipy import stats

import repsub
from benchmarks.paper_findings import MODELS, Settings, run_model, write_digits

SIMILARITIES = ("labels", "pixels", "features")
FEATURE_LAYER = {"shallow_cnn": "fc5", "mlp": "fc4"}


def _units(table, basis: str = "unit"):
    if table is None:
        return table
    return table.filter(pc.equal(pc.fill_null(table.column("basis"), "unit"), basis))


def measure(run: Path, model: str) -> None:
    for similarity in SIMILARITIES:
        options = {"feature_layer": FEATURE_LAYER[model]} if similarity == "features" else {}
        repsub.interpretability(run, similarity=similarity, variant="both", progress=False, device="cpu",
                                **options)  # fmt: skip


def results(run: Path, model: str) -> list[dict]:
    opened = repsub.open_run(run)
    selectivity = {(r["layer"], r["unit"]): r for r in _units(opened.table("selectivity")).to_pylist()}
    am = {
        (r["layer"], r["unit"]): r for r in _units(opened.table("units")).to_pylist() if r["method"] == "am"
    }
    index = opened.table("interpretability").to_pylist()
    out = []
    layers = [row["name"] for row in opened.layers]
    for depth, layer in enumerate(layers, 1):
        for similarity in SIMILARITIES:
            for variant in ("extremal", "central"):
                part = [
                    r
                    for r in index
                    if (r["layer"], r["similarity"], r["variant"]) == (layer, similarity, variant)
                ]
                values, rs, sel = [], [], []
                for r in part:
                    s, a = selectivity.get((layer, r["unit"])), am.get((layer, r["unit"]))
                    if s is None or s["dead"] or not math.isfinite(r["index"]):
                        continue
                    values.append(r["index"])
                    ok = a is not None and a["status"] == "ok"
                    rs.append(a["rs"] if ok else math.nan)
                    sel.append(s["selectivity"])
                values, rs, sel = map(np.asarray, (values, rs, sel))
                with_rs = np.isfinite(rs) & np.isfinite(values)
                out.append({
                    "model": model, "layer": layer, "depth": depth, "similarity": similarity, "variant": variant,
                    "n": len(values), "mean": float(values.mean()) if len(values) else math.nan,
                    "rho_rs": _spearman(values[with_rs], rs[with_rs]),
                    "rho_sel": _spearman(values[np.isfinite(sel)], sel[np.isfinite(sel)]),
                })  # fmt: skip
    return out


def _spearman(x, y) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def findings(rows: list[dict]) -> list[str]:
    extremal = [r for r in rows if r["variant"] == "extremal" and r["n"]]
    labels = [r for r in extremal if r["similarity"] == "labels"]
    above = sum(r["mean"] > 0.5 for r in extremal)
    sel_pos = sum(r["rho_sel"] > 0 for r in labels if math.isfinite(r["rho_sel"]))
    sel_n = sum(math.isfinite(r["rho_sel"]) for r in labels)
    rs_neg = sum(r["rho_rs"] < 0 for r in labels if math.isfinite(r["rho_rs"]))
    rs_n = sum(math.isfinite(r["rho_rs"]) for r in labels)
    pairs = {(r["model"], r["layer"], r["similarity"]): r["mean"] for r in rows if r["variant"] == "extremal"}
    lower = [r["mean"] < pairs[r["model"], r["layer"], r["similarity"]] for r in rows
             if r["variant"] == "central" and r["n"] and math.isfinite(r["mean"])]  # fmt: skip

    def verdict(holds: bool) -> str:
        return "HOLDS" if holds else "DOES NOT HOLD"

    return [
        f"(1) extremal index above chance in {above}/{len(extremal)} (layer, similarity) -> "
        f"{verdict(above == len(extremal))}",
        f"(2) rho(index, selectivity) > 0 (labels) in {sel_pos}/{sel_n} layers -> {verdict(sel_pos > sel_n / 2)}",
        f"(3) rho(index, RS) < 0 (labels) in {rs_neg}/{rs_n} layers -> {verdict(rs_neg > rs_n / 2)}",
        f"(4) central index below extremal in {sum(lower)}/{len(lower)} (layer, similarity) -> "
        f"{verdict(sum(lower) > len(lower) / 2)}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/paper-findings")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: shallow_cnn, mlp")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = write_digits(out / "digits")
    settings = Settings(out=out, steps=args.steps, epochs={m: args.epochs for m in MODELS})
    rows = []
    for model in args.models.split(","):
        run = out / f"{model}-hybrid"
        started = time.monotonic()
        if not (run / "manifest.json").is_file():
            run_model(model, settings, train, val, "hybrid")
        measure(run, model)
        print(f"{model}: index measured in {time.monotonic() - started:.0f} s", flush=True)
        rows += results(run, model)
    print(f"\n{'model':<12} {'layer':<6} {'similarity':<9} {'variant':<8} {'n':>5} {'mean':>6} {'rho RS':>7} "
          f"{'rho sel':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<12} {r['layer']:<6} {r['similarity']:<9} {r['variant']:<8} {r['n']:>5} "
              f"{r['mean']:>6.3f} {r['rho_rs']:>7.3f} {r['rho_sel']:>7.3f}")  # fmt: skip
    print()
    print("\n".join(findings(rows)))


if __name__ == "__main__":
    main()
