"""Which differentiable encoder the nmf basis keeps: relu(x E^T + b) against NMF's own coefficients.

NMF's coefficients of a vector x for the components H [K, C] are the NNLS solution argmin_{z>=0} ||x - zH||²
(sklearn's NMF.transform, a solver per input: not differentiable). The basis's encoder must be one affine map
and a ReLU. Candidates, each measured on held-out vectors by the FVE of relu(x E^T + b) @ H, the code R² (1 -
sum ||z - z_nnls||² / sum ||z_nnls - mean||², how close the responses are to the NNLS coefficients) and the
mean L0:

- pinv: E = pinv(H)^T, b = 0 (the encoder before);
- ridge-H: E = (H H^T + lam I)^-1 H, b = 0, lam on a log grid relative to trace(H H^T)/K, 0 included (= pinv);
- reg-W: a ridge regression, with a bias, of NMF's fitted codes W (fit_transform's output) on x;
- reg-NNLS: the same regression of the NNLS codes of the fit vectors (sklearn's transform of them);
- chosen: reg-NNLS refined by L-BFGS on the reconstruction ||relu(x E^T + b) H - x||² (nmf.fit_encoder).

Each lam is the one, and the refinement's round the one, that reconstructs a seeded fifth of the fit vectors
best (nmf.check_split); the regressions and the refinement fit the other four fifths. Time: of the encoder alone.
Data: the tests' correlated post-ReLU vectors (tests/test_bases_core.correlated; 2,400 fit, 600 held out) at
K < C and K = C, and the digits CNN of benchmarks.paper_findings (runs/paper-findings/shallow_cnn.pt; the train
digits, 16 positions per image sampled as `repsub basis fit` does, its held-out images held out) at K = C.

    .venv/bin/python -m benchmarks.nmf_encoder                     # conv1 and fc5, ~1.5 min
    .venv/bin/python -m benchmarks.nmf_encoder --layers conv1,conv2,conv3,conv4,fc5

One thread throughout (the machine is shared). Recorded in repsub/core/bases/nmf.py's docstring.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from repsub.core.bases.nmf import (
    MAX_ITER,
    check_split,
    code_regression,
    fit_encoder,
    reconstruction_error,
    ridge_path,
)

SYNTHETIC = [(12, 6), (64, 16), (64, 48), (12, 12), (64, 64)]  # (C, K)


def fve(x_hat: np.ndarray, x: np.ndarray) -> float:
    return float(1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def ridge_on_components(x: np.ndarray, h: np.ndarray, check: np.ndarray):
    """(H H^T + lam I)^-1 H with the lam that reconstructs x[check] best (lam 0: exactly pinv(H)^T)."""
    best = None
    for lam, weight in ridge_path(h @ h.T, h):
        weight = np.linalg.pinv(h).T if lam == 0 else weight
        error = reconstruction_error(x[check], h, weight, np.zeros(len(h)))
        if best is None or error < best[0]:
            best = (error, weight, lam)
    return best[1], np.zeros(len(h)), f"lam {best[2]:.3g}"


def regression(x: np.ndarray, codes: np.ndarray, h: np.ndarray, rows: np.ndarray, check: np.ndarray):
    weight, bias, lam = code_regression(x, codes, h, rows, check)
    return weight, bias, f"lam {lam:.3g}"


def chosen(x: np.ndarray, h: np.ndarray, codes: np.ndarray):
    weight, bias, how = fit_encoder(x, h, codes, seed=0)
    return weight, bias, f"lam {how['ridge']:.3g}, refinement round {how['refine_rounds']}"


def measure(name: str, fit: np.ndarray, held: np.ndarray, k: int) -> None:
    from sklearn.decomposition import NMF

    started = time.monotonic()
    model = NMF(n_components=k, init="nndsvda", random_state=0, max_iter=MAX_ITER)  # as nmf_basis fits it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fit that stops at max_iter is measured as it is
        codes = model.fit_transform(fit)
        nmf_seconds = time.monotonic() - started
        started = time.monotonic()
        fit_nnls = model.transform(fit)
        nnls_seconds = time.monotonic() - started
        nnls = model.transform(held)
    h = model.components_
    print(f"{name}: C {fit.shape[1]}, K {k}, {len(fit)} fit / {len(held)} held-out vectors, NMF {model.n_iter_} "
          f"iterations ({nmf_seconds:.0f} s), cond(H) {np.linalg.cond(h):.2g}")  # fmt: skip
    spread = ((nnls - nnls.mean(0)) ** 2).sum()
    rows, check = check_split(len(fit), seed=0)

    def row(label: str, z: np.ndarray, seconds: float, note: str) -> None:
        code_r2 = 1 - ((z - nnls) ** 2).sum() / spread
        print(f"  {label:<10} FVE {fve(z @ h, held):>9.4g}  code R² {code_r2:>9.3g}  L0 {(z > 0).sum(1).mean():5.1f}"
              f"  {seconds:5.1f} s  {note}", flush=True)  # fmt: skip

    def candidate(label: str, encoder, *args) -> None:
        started = time.monotonic()
        weight, bias, note = encoder(*args)
        row(label, np.maximum(held @ weight.T + bias, 0.0), time.monotonic() - started, note)

    row("NNLS", nnls, nnls_seconds, "sklearn's transform (the reference; time: of the fit vectors)")
    candidate("pinv", lambda: (np.linalg.pinv(h).T, np.zeros(k), "the encoder before"))
    candidate("ridge-H", ridge_on_components, fit, h, check)
    candidate("reg-W", regression, fit, codes, h, rows, check)
    candidate("reg-NNLS", regression, fit, fit_nnls, h, rows, check)
    candidate("chosen", chosen, fit, h, fit_nnls)


def synthetic() -> None:
    from tests.test_bases_core import correlated

    for c, k in SYNTHETIC:
        x = correlated(3000, c).numpy()
        measure("correlated (tests)", x[:2400], x[2400:], k)


def digits(layers: list[str], runs: Path) -> None:
    from benchmarks.paper_findings import IMAGE_SIZE, write_digits
    from repsub.capture.positions import sample_vectors
    from repsub.commands.basis import DEFAULT_POSITIONS
    from repsub.data.sources import open_source
    from repsub.models import load_model

    weights = runs / "shallow_cnn.pt"
    if not weights.is_file():
        raise SystemExit(
            f"{weights}: no trained digits CNN (python -m benchmarks.paper_findings --out {runs})"
        )
    train, _ = write_digits(runs / "digits")
    model = load_model("shallow_cnn", weights=str(weights), device="cpu")
    names = [layer.name for layer in model.layers]
    if set(layers) - set(names):
        raise SystemExit(f"--layers {','.join(layers)}: the digits CNN's layers are {', '.join(names)}")
    picked = [layer for layer in model.layers if layer.name in layers]
    source = open_source(train, IMAGE_SIZE, model.mean, model.std, model.resize_ratio)
    indices = np.arange(len(source.labels()))
    samples = sample_vectors(model, picked, source.batches(128, indices=indices, workers=0), indices,
                             DEFAULT_POSITIONS, seed=0)  # fmt: skip
    for layer in picked:
        sample = samples[layer.name]
        fit, held = (part.double().numpy() for part in (sample.fit, sample.held_out))
        measure(f"digits CNN {layer.name}", fit, held, layer.n_units)


def main(argv: list[str] | None = None) -> None:
    from threadpoolctl import threadpool_limits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="conv1,fc5", help="layers of the digits CNN, comma-separated")
    parser.add_argument("--runs", default="runs/paper-findings", help="where benchmarks.paper_findings wrote")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with threadpool_limits(1):
        synthetic()
        digits(args.layers.split(","), Path(args.runs))


if __name__ == "__main__":
    main()
