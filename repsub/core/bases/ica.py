"""ICA: scikit-learn's FastICA on a sample of activation vectors, after whitening (`whiten="unit-variance"`).

The response of direction k is the k-th independent source, (x - mean) @ unmixing_kᵀ (the unmixing includes the
whitening); decoding is the mixing matrix. Each source is oriented by `orient_signs` on the fit sample (FastICA's
signs are arbitrary)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from repsub.core.bases.basis import Basis, orient_signs

MAX_ITER = 400


def ica_basis(layer: str, sample: torch.Tensor, size: int, seed: int) -> Basis:
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    x = sample.detach().cpu().to(torch.float64).numpy()
    ica = FastICA(n_components=size, whiten="unit-variance", random_state=seed, max_iter=MAX_ITER, tol=1e-4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        sources = ica.fit_transform(x)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    signs = orient_signs(torch.from_numpy(sources)).to(torch.float64).numpy()
    unmixing = ica.components_ * signs[:, None]  # [K, C]
    mixing = ica.mixing_ * signs[None, :]  # [C, K]
    settings = {"seed": seed, "n_vectors": len(x), "iterations": int(ica.n_iter_), "converged": converged,
                "solver": "sklearn.decomposition.FastICA"}  # fmt: skip
    return Basis(
        kind="ica", layer=layer, directions=torch.from_numpy(np.ascontiguousarray(mixing.T)),
        encoder_weight=torch.from_numpy(unmixing), encoder_bias=torch.zeros(size),
        center=torch.from_numpy(ica.mean_), settings=settings,
    )  # fmt: skip
