"""NMF, CRAFT-style: scikit-learn's NMF of the non-negative (post-ReLU) activation vectors, X ≈ W H.

The directions are H's rows. NMF's own coefficients of a vector x are the NNLS solution argmin_{z>=0} ||x - zH||²
(sklearn's `transform`: a solver run per input, not differentiable), and a basis's encoder is one affine map and a
ReLU (repsub.core.bases.basis). So the response is relu(x @ E.T + b), its pre-activation x @ E.T + b, with E, b
fitted to the NNLS on the fit sample:

1. Z, the NNLS coefficients of the fit vectors (sklearn's transform with the fitted H);
2. a ridge regression of Z on x with a bias, lam on a log grid (0, the plain least squares, included): the lam
   whose relu(x E^T + b) H reconstructs the check rows best (a seeded fifth of the fit sample, `check_split`),
   fitted on the other four fifths;
3. L-BFGS on the reconstruction error sum ||relu(x E^T + b) H - x||² over those four fifths (H fixed), in rounds
   of 20 iterations, keeping the round that reconstructs the check rows best (round 0: the regression itself).

Why not relu(x @ pinv(H)) (the encoder before): at K = C, the science's size, H is square and ill-conditioned.
Held-out FVE (mean L0) from `.venv/bin/python -m benchmarks.nmf_encoder` (one thread, 1.5 min):

    data (C, K)              NNLS          pinv           ridge on H    reg. W        reg. NNLS     chosen
    correlated (12, 6)       0.810 (3.9)   0.810 (4.0)    0.810 (4.0)   0.808 (4.6)   0.808 (4.6)   0.810 (3.9)
    correlated (64, 16)      0.412 (10.7)  0.407 (11.3)   0.408 (11.4)  0.403 (12.6)  0.403 (12.6)  0.411 (10.8)
    correlated (64, 64)      0.984 (36.7)  -4.8e9 (39.1)  0.983 (42.3)  0.982 (47.7)  0.983 (47.8)  0.984 (38.7)
    digits CNN conv1 (64)    0.999 (24.8)  -33.3 (37.7)   0.920 (41.6)  0.984 (43.0)  0.988 (43.2)  0.996 (27.2)
    digits CNN fc5 (128)     0.851 (12.9)  -292 (69.5)    0.414 (103)   0.580 (37.4)  0.784 (42.5)  0.834 (13.6)

(correlated: the tests' post-ReLU vectors; digits CNN: benchmarks.paper_findings's, K = C. Ridge on H:
(H H^T + lam I)^-1 H; reg. W: step 2 with NMF's fitted W for Z; reg. NNLS: step 2 alone; lam chosen as in step 2
for all.) The refinement brings the responses' sparsity to NNLS's and the FVE within 0.02 of it; the code R² of
the responses against the NNLS coefficients on held-out vectors is 0.998 (64, 64), 0.94 conv1, 0.83 fc5. Its
cost: an NNLS transform of the fit vectors and at most REFINE_ROUNDS x 20 reconstruction gradients, about the NMF
fit's own (conv1: NMF 23 s, NNLS 19 s, refinement 14 s). tests/test_bases_core.py keeps it within 0.01 of the
NNLS FVE at K = C, where pinv's is below 0."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from repsub.core.bases.basis import Basis
from repsub.errors import UsageError

MAX_ITER = 400
CHECK_SHARE = 5  # one vector in CHECK_SHARE of the fit sample checks the encoder's choices
RIDGE_SCALES = (0.0, *(10.0 ** (e / 2) for e in range(-16, 3)))  # lam / (trace(Gram) / its size): 0, 1e-8..10
REFINE_ROUNDS = 30  # of REFINE_ITERATIONS L-BFGS iterations each
REFINE_ITERATIONS = 20
REFINE_PATIENCE = 5  # rounds without a better check reconstruction before the refinement stops


def nmf_basis(layer: str, sample: torch.Tensor, size: int, seed: int) -> Basis:
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    x = sample.detach().cpu().to(torch.float64)
    if (x < 0).any():
        raise UsageError(
            f"nmf on {layer}: its activations take negative values (smallest {x.min().item():.4g}); NMF needs "
            "a non-negative (post-ReLU) layer: use pca, ica or kmeans there"
        )
    model = NMF(n_components=size, init="nndsvda", random_state=seed, max_iter=MAX_ITER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x.numpy())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    h = np.ascontiguousarray(model.components_)  # [K, C]
    with warnings.catch_warnings():
        # Z of step 2: a regression's target, refined after. Not fit's W: NMF may stop early (2 iterations on the
        # digits CNN's fc5 at K = C), and its W is then far from the NNLS coefficients (benchmarks.nmf_encoder).
        warnings.simplefilter("ignore", ConvergenceWarning)
        codes = model.transform(x.numpy()) if h.any() else np.zeros((len(x), size))  # all 0: a dead layer
    weight, bias, how = fit_encoder(x.numpy(), h, codes, seed)
    settings = {"seed": seed, "n_vectors": len(x), "iterations": int(model.n_iter_), "converged": converged,
                "reconstruction_err": float(model.reconstruction_err_), "solver": "sklearn.decomposition.NMF",
                **how}  # fmt: skip
    return Basis(
        kind="nmf", layer=layer, directions=torch.from_numpy(h), encoder_weight=torch.from_numpy(weight),
        encoder_bias=torch.from_numpy(bias), center=torch.zeros(x.shape[1]), encoder="relu", settings=settings,
    )  # fmt: skip


def fit_encoder(
    x: np.ndarray, h: np.ndarray, codes: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight [K, C], bias [K], how: the settings it records) of the encoder (module docstring, steps 2 and 3)
    for the fit vectors x [N, C], the components h [K, C] and the NNLS codes [N, K] of x."""
    rows, check = check_split(len(x), seed)
    weight, bias, lam = code_regression(x, codes, h, rows, check)
    weight, bias, rounds, check_fve = refine(x, h, weight, bias, rows, check)
    how = {"encoder": "relu(x @ E.T + b): ridge regression of the NNLS codes, refined on the reconstruction",
           "ridge": lam, "refine_rounds": rounds, "n_check": len(check), "check_fve": check_fve}  # fmt: skip
    return weight, bias, how


def check_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, check rows) of n vectors: the first n // CHECK_SHARE of numpy's default_rng(seed).permutation(n)
    check, the rest fit (under CHECK_SHARE vectors: all of them do both)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = n // CHECK_SHARE
    return (order[cut:], order[:cut]) if cut else (order, order)


def ridge_path(gram: np.ndarray, right: np.ndarray):
    """(lam, (gram + lam I)^-1 right) for lam = scale x trace(gram) / size, scale over RIDGE_SCALES; lam 0: the
    pseudo-inverse (eigenvalues under size x eps of the largest dropped). One eigendecomposition for all."""
    values, vectors = np.linalg.eigh(gram)
    projected = vectors.T @ right
    unit = float(np.trace(gram)) / len(gram)
    floor = max(values.max(), 0.0) * len(gram) * np.finfo(np.float64).eps
    for scale in RIDGE_SCALES:
        lam = scale * unit
        inverse = np.divide(1.0, values + lam, out=np.zeros_like(values), where=values + lam > floor)
        yield lam, vectors @ (inverse[:, None] * projected)


def reconstruction_error(x: np.ndarray, h: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> float:
    """sum ||relu(x @ weight.T + bias) @ h - x||²."""
    return float(((np.maximum(x @ weight.T + bias, 0.0) @ h - x) ** 2).sum())


def code_regression(x, codes, h, rows, check) -> tuple[np.ndarray, np.ndarray, float]:
    """(weight [K, C], bias [K], lam): the ridge regression of `codes` [N, K] on x [N, C] over `rows`, with a bias
    (unpenalized), whose relu reconstructs x[check] best over the lam of `ridge_path`."""
    mean_x, mean_z = x[rows].mean(0), codes[rows].mean(0)
    centred = x[rows] - mean_x
    best = None
    for lam, a in ridge_path(centred.T @ centred, centred.T @ (codes[rows] - mean_z)):
        weight, bias = a.T, mean_z - mean_x @ a
        error = reconstruction_error(x[check], h, weight, bias)
        if best is None or error < best[0]:
            best = (error, np.ascontiguousarray(weight), bias, lam)
    return best[1], best[2], best[3]


def refine(x, h, weight, bias, rows, check) -> tuple[np.ndarray, np.ndarray, int, float | None]:
    """L-BFGS on sum ||relu(x E^T + b) H - x||² over x[rows] from (weight, bias), H fixed: (weight, bias, round,
    check FVE) of the round that reconstructs x[check] best (round 0: the start), in float64."""
    fit_x, check_x, comps = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x[rows], x[check], h))
    w = torch.from_numpy(weight.copy()).requires_grad_()
    b = torch.from_numpy(bias.copy()).requires_grad_()
    optimizer = torch.optim.LBFGS(
        [w, b], max_iter=REFINE_ITERATIONS, history_size=20, line_search_fn="strong_wolfe"
    )
    scale = float(((fit_x - fit_x.mean(0)) ** 2).sum()) or 1.0  # a loss near 1, whatever the layer's scale

    def closure():
        optimizer.zero_grad()
        loss = ((torch.relu(fit_x @ w.T + b) @ comps - fit_x) ** 2).sum() / scale
        loss.backward()
        return loss

    best = (reconstruction_error(x[check], h, weight, bias), weight, bias, 0)
    for round_ in range(1, REFINE_ROUNDS + 1):
        with torch.enable_grad():  # a caller's no_grad must not stop the fit
            optimizer.step(closure)
        with torch.no_grad():
            error = float(((torch.relu(check_x @ w.T + b) @ comps - check_x) ** 2).sum())
        if error < best[0]:
            best = (error, w.detach().numpy().copy(), b.detach().numpy().copy(), round_)
        elif round_ - best[3] >= REFINE_PATIENCE:
            break
    spread = float(((x[check] - x[check].mean(0)) ** 2).sum())
    return best[1], best[2], best[3], 1.0 - best[0] / spread if spread > 0 else None
