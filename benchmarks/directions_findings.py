"""Directions against units on real data (issue 18's science): the digits, the paper's shallow CNN.

Trains the CNN on scikit-learn's handwritten digits as benchmarks.paper_findings does (same split, same run
directory: its units' selectivity, AM, IAM and importance are reused when present), then fits on every hidden
layer (conv1-4, fc5; not the logits), on the training digits, the bases

    random (a seeded rotation, the control), pca, nmf, kmeans, sae: K = the layer's units; sae4x: K = 4 x units

and measures every direction as a unit (each step only where its rows are missing, so a stopped run resumes;
`--redo` fits named bases again, `--revisualize` optimizes their images again): selectivity on the held-out digits (all directions), AM and IAM and
importance by ablation (zero: the response removed at every position) for `--targets` directions per layer (a
seeded subset; RS counts all K). Prints per layer and basis: mean selectivity, mean RS, rho(RS, selectivity),
mean accuracy drop and loss increase, the basis metrics (FVE, L0, dead, stability) and the failed
optimizations (alive directions with status != ok), then the two findings the issue names as statements:

(A) sparse distributed directions (nmf, sae) are more selective, less replaceable (lower RS) and more important
    than the units, the more so with depth (Colin et al. 2024);
(B) k-means directions are more selective than the units (Klindt et al. 2023; selectivity as the proxy here,
    the 2AFC index being measured for units by benchmarks.index_findings);
and the control: a random rotation is less selective than the units (Bau et al. 2017).

The MLP is left out: its fc3/fc4 have 2,048 units, more than the 1,437 training digits give vectors (one per
image): a K = C basis would be fitted on fewer vectors than dimensions.

    .venv/bin/python -m benchmarks.directions_findings [--out runs/paper-findings] [--steps 128] [--targets 48]

`--demo` measures the same bases on `repsub demo`'s run instead (its generated data and briefly trained CNN,
made under --out when absent): the optimization statuses of the directions there, at --steps (256 is the
demo's status check).

    .venv/bin/python -m benchmarks.directions_findings --demo --out runs/demo-bases --steps 256 --targets 16
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from scipy import stats

import repsub
from benchmarks.paper_findings import IMAGE_SIZE, Settings, run_model, write_digits
from repsub.models import load_model
from repsub.optimize import OptimSettings

MODEL = "shallow_cnn"
BASES = {  # name: (kind, K as a multiple of the layer's units)
    "random": ("random", 1), "pca": ("pca", 1), "nmf": ("nmf", 1), "kmeans": ("kmeans", 1),
    "sae": ("sae", 1), "sae4x": ("sae", 4),
}  # fmt: skip
SPARSE = ("nmf", "sae", "sae4x")


@dataclass
class Row:
    layer: str
    depth: int
    basis: str
    K: int  # noqa: N815
    alive: int
    mean_selectivity: float
    rs: dict  # method: mean RS over alive, ok targets
    rho: dict  # method: Spearman rho(RS, selectivity) over the same
    failed: dict  # method: (alive targets with status != ok, alive targets optimized)
    accuracy_drop: float
    loss_increase: float
    metrics: dict


def targets_of(K: int, count: int, seed: int) -> list[int]:  # noqa: N803
    """A seeded subset of `count` directions (all when K <= count), sorted."""
    if count >= K:
        return list(range(K))
    return sorted(np.random.default_rng(seed).choice(K, count, replace=False).tolist())


def subset_of(layer: str, basis: str, K: int, count: int) -> list[int]:  # noqa: N803
    """The directions of `basis` at `layer` this benchmark optimizes and ablates. Seeded with crc32, not hash():
    a str's hash changes with every process, and so did the subset (a rerun or a resume measured other
    directions beside the first run's, whose rows stay in the run: `read_results` reads this subset's only)."""
    return targets_of(K, count, seed=zlib.crc32(f"{layer}/{basis}".encode()))


def _present(run: Path, table: str, columns: list[str]) -> set[tuple]:
    """The distinct values of `columns` in a table of the run (empty when it has none)."""
    if not (run / table).is_dir():
        return set()
    rows = repsub.open_run(run).table(table, columns=columns)
    if rows is None:
        return set()
    values = [rows.column(c).to_pylist() for c in columns]
    return {tuple("unit" if v is None else v for v in row) for row in zip(*values, strict=True)}


def measure_bases(run: Path, train: Path, val: Path, weights: Path, settings: argparse.Namespace) -> None:
    """Fit and measure every basis of every hidden layer into `run`, each step (fit, selectivity, AM, IAM,
    importance) only where its rows are not there yet, or again for the bases named in `settings.redo`."""
    loaded = load_model(MODEL, weights=str(weights), device="cpu")
    fitted = _present(run, "bases", ["layer", "name"])
    measured = _present(run, "selectivity", ["layer", "basis"])
    optimized = _present(run, "units", ["layer", "basis", "method"])
    ablated = _present(run, "importance", ["layer", "basis"])
    optim = OptimSettings(steps=settings.steps, image_size=IMAGE_SIZE, batch_size=128, precision="fp32",
                          rescue_rounds=settings.rescue_rounds)  # fmt: skip
    for layer in loaded.layers:
        if layer.read == "logits" or (settings.layers and layer.name not in settings.layers):
            continue
        for name, (kind, multiple) in BASES.items():
            redo = name in settings.redo
            started = time.monotonic()
            size = multiple * layer.n_units
            if redo or (layer.name, name) not in fitted:
                repsub.fit_basis(run, layers=[layer.name], kind=kind, size=size, name=name, data=train, seed=0,
                                 model=loaded, workers=0, device="cpu", replace=redo)  # fmt: skip
            targets = subset_of(layer.name, name, size, settings.targets)
            if redo or (layer.name, name) not in measured:
                repsub.selectivity(model=loaded, data=val, out=run, layers=[layer.name], basis=name,
                                   batch_size=128, workers=0, device="cpu", progress=False, precision="fp32")  # fmt: skip
            for method in ("am", "iam"):
                if redo or name in settings.revisualize or (layer.name, name, method) not in optimized:
                    repsub.visualize(model=loaded, method=method, out=run, layers=[layer.name], basis=name,
                                     units=targets, settings=optim, device="cpu", progress=False)  # fmt: skip
            if redo or (layer.name, name) not in ablated:
                repsub.importance(model=loaded, data=val, out=run, layers=[layer.name], basis=name,
                                  units=targets, image_size=IMAGE_SIZE, batch_size=128, device="cpu", workers=0,
                                  progress=False)  # fmt: skip
            print(f"  {layer.name} {name}: K {size}, {time.monotonic() - started:.0f} s", flush=True)


def _rows_of(table, layer: str, basis: str):
    if table is None:
        return []
    mask = pc.and_(
        pc.equal(table.column("layer"), layer), pc.equal(pc.fill_null(table.column("basis"), "unit"), basis)
    )
    return table.filter(mask).to_pylist()


def _spearman(x: list[float], y: list[float]) -> float:
    return float(stats.spearmanr(x, y).statistic) if len(x) >= 3 else math.nan


def read_results(run: Path, count: int) -> list[Row]:
    """Per layer and basis, the measures over the benchmark's subset of `count` directions (`subset_of`; every
    unit for the units), alive on the held-out digits."""
    opened = repsub.open_run(run)
    selectivity, units = opened.table("selectivity"), opened.table("units")
    importance, bases = opened.table("importance"), opened.table("bases")
    layers = [row["name"] for row in opened.layers if row.get("read") != "logits"]
    rows = []
    for depth, layer in enumerate(layers, 1):
        for basis in ("unit", *BASES):
            sel = {r["unit"]: r for r in _rows_of(selectivity, layer, basis)}
            if not sel:
                continue
            alive = {u for u, r in sel.items() if not r["dead"] and math.isfinite(r["selectivity"])}
            measured = set(sel) if basis == "unit" else set(subset_of(layer, basis, len(sel), count))
            rs, rho, failed = {}, {}, {}
            for method in ("am", "iam"):
                done = [
                    r for r in _rows_of(units, layer, basis)
                    if r["method"] == method and r["unit"] in alive and r["unit"] in measured
                ]  # fmt: skip
                ok = [r for r in done if r["status"] == "ok"]
                failed[method] = (len(done) - len(ok), len(done))
                rs[method] = float(np.mean([r["rs"] for r in ok])) if ok else math.nan
                rho[method] = _spearman([r["rs"] for r in ok], [sel[r["unit"]]["selectivity"] for r in ok])
            ablated = [
                r
                for r in _rows_of(importance, layer, basis)
                if r["ablation"] == "zero" and r["unit"] in measured
            ]
            fit = None
            if basis != "unit" and bases is not None:
                mask = pc.and_(pc.equal(bases.column("layer"), layer), pc.equal(bases.column("name"), basis))
                fit = next(iter(bases.filter(mask).to_pylist()), None)
            rows.append(Row(
                layer=layer, depth=depth, basis=basis, K=len(sel), alive=len(alive),
                mean_selectivity=float(np.mean([sel[u]["selectivity"] for u in alive])) if alive else math.nan,
                rs=rs, rho=rho, failed=failed,
                accuracy_drop=float(np.mean([r["accuracy_drop"] for r in ablated])) if ablated else math.nan,
                loss_increase=float(np.mean([r["loss_increase"] for r in ablated])) if ablated else math.nan,
                metrics={} if fit is None else {k: fit[k] for k in ("fve", "mean_l0", "dead", "stability")},
            ))  # fmt: skip
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [
        f"{'layer':<6} {'basis':<7} {'K':>5} {'alive':>5} {'sel':>6} {'RS am':>6} {'RS iam':>6} {'rho am':>7} "
        f"{'rho iam':>7} {'failed am/iam':>14} {'acc drop':>9} {'loss inc':>9} {'FVE':>6} {'L0':>7} {'dead':>5} "
        f"{'stab':>5}"
    ]
    for r in rows:
        m = r.metrics
        failed = "{}/{} {}/{}".format(*r.failed["am"], *r.failed["iam"])
        lines.append(
            f"{r.layer:<6} {r.basis:<7} {r.K:>5} {r.alive:>5} {r.mean_selectivity:>6.3f} {r.rs['am']:>6.3f} "
            f"{r.rs['iam']:>6.3f} {r.rho['am']:>7.3f} {r.rho['iam']:>7.3f} "
            f"{failed:>14} {r.accuracy_drop:>9.4f} "
            f"{r.loss_increase:>9.4f} {m.get('fve', math.nan):>6.3f} {m.get('mean_l0', math.nan):>7.1f} "
            f"{m.get('dead', -1):>5} {m.get('stability', math.nan):>5.2f}"
        )
    return "\n".join(lines)


def findings(rows: list[Row]) -> list[str]:
    by = {(r.layer, r.basis): r for r in rows}
    layers = list(dict.fromkeys(r.layer for r in rows))
    out = []

    def compare(basis: str, field: str, better) -> tuple[list[float], int]:
        diffs = [getattr(by[layer, basis], field) - getattr(by[layer, "unit"], field)
                 if field != "rs" else by[layer, basis].rs["am"] - by[layer, "unit"].rs["am"]
                 for layer in layers if (layer, basis) in by and (layer, "unit") in by]  # fmt: skip
        return diffs, sum(better(d) for d in diffs if math.isfinite(d))

    for basis in SPARSE:
        sel, sel_wins = compare(basis, "mean_selectivity", lambda d: d > 0)
        rs, rs_wins = compare(basis, "rs", lambda d: d < 0)
        imp, imp_wins = compare(basis, "accuracy_drop", lambda d: d > 0)
        trend = _spearman(list(range(len(sel))), sel)
        out.append(
            f"(A) {basis}: more selective than units in {sel_wins}/{len(sel)} layers (difference vs depth rho "
            f"{trend:+.2f}); lower AM RS in {rs_wins}/{len(rs)}; larger accuracy drop in {imp_wins}/{len(imp)} -> "
            f"{'HOLDS' if sel_wins > len(sel) / 2 and rs_wins > len(rs) / 2 and imp_wins > len(imp) / 2 else 'DOES NOT HOLD'}"
            f" (all three in most layers); more so with depth: {'yes' if trend > 0 else 'no'}"
        )
    sel, wins = compare("kmeans", "mean_selectivity", lambda d: d > 0)
    out.append(f"(B) kmeans more selective than units in {wins}/{len(sel)} layers -> "
               f"{'HOLDS' if wins > len(sel) / 2 else 'DOES NOT HOLD'}")  # fmt: skip
    sel, wins = compare("random", "mean_selectivity", lambda d: d < 0)
    out.append(f"(control) random rotation less selective than units in {wins}/{len(sel)} layers -> "
               f"{'HOLDS' if wins > len(sel) / 2 else 'DOES NOT HOLD'}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/paper-findings")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--targets", type=int, default=48, help="directions optimized and ablated per layer")
    parser.add_argument("--demo", action="store_true", help="the demo's run and data instead of the digits")
    parser.add_argument("--rescue-rounds", type=int, default=OptimSettings.rescue_rounds,
                        help="more rounds of --steps for a direction still silent (repsub visualize's)")  # fmt: skip
    parser.add_argument("--redo", type=lambda v: v.split(","), default=[],
                        help="bases (comma-separated) to fit again (replacing the fit and its rows) and measure")  # fmt: skip
    parser.add_argument("--layers", type=lambda v: v.split(","), default=[],
                        help="measure these layers only (comma-separated; default: every hidden layer)")  # fmt: skip
    parser.add_argument("--revisualize", type=lambda v: v.split(","), default=[],
                        help="bases (comma-separated) whose AM and IAM to measure again (the settings changed)")  # fmt: skip
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.demo:
        from repsub.commands.demo import run_demo
        from repsub.data.synthetic import cached_demo_data

        train, val = cached_demo_data()
        run, what = out, "the demo's generated data"
        if not (run / "manifest.json").is_file():
            run_demo(str(out), progress=False)
    else:
        train, val = write_digits(out / "digits")
        run, what = out / f"{MODEL}-hybrid", "the digits"
        if not (run / "manifest.json").is_file():  # the units, as benchmarks.paper_findings measures them
            settings = Settings(out=out, steps=args.steps, epochs={MODEL: args.epochs})
            run_model(MODEL, settings, train, val, "hybrid")
    measure_bases(run, train, val, out / f"{MODEL}.pt", args)
    rows = read_results(run, args.targets)
    print(f"\n{MODEL} on {what}, {args.steps} steps (+ up to {args.rescue_rounds} rescue rounds), {args.targets} "
          "directions per layer optimized "
          f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    print(format_rows(rows))
    print()
    print("\n".join(findings(rows)))


if __name__ == "__main__":
    main()
