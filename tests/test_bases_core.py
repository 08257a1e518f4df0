"""The bases of a layer (repsub.core.bases): each kind against an independent computation (numpy, scikit-learn,
scipy), the exact PCA sums across shards, storage round trips and the metrics."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from repsub.core.bases import nmf
from repsub.core.bases.basis import Basis, orient_signs
from repsub.core.bases.fit import KINDS, check_size, fit_basis
from repsub.core.bases.linear import random_rotation, unit_basis, vectors_basis
from repsub.core.bases.metrics import activity, basis_metrics, fve, stability
from repsub.core.bases.pca import PcaSums, principal_components
from repsub.errors import UsageError


def correlated(n: int, c: int, seed: int = 0, relu: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=generator, dtype=torch.float64) @ torch.randn(
        c, c, generator=generator, dtype=torch.float64
    )
    return torch.relu(x) if relu else x


def test_pca_sums_over_shards_equal_the_unsplit_fit():
    x = correlated(3000, 24, relu=False) + 5.0  # an offset: the covariance must not lose it to rounding
    whole = PcaSums(24).add(x)
    cuts = [0, 7, 1000, 1001, 2500, 3000]
    shards = [PcaSums(24).add(x[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    merged = shards[0]
    for shard in shards[1:]:
        merged.merge(PcaSums.from_state_dict(shard.state_dict()))  # through storage, as a sweep would
    assert merged.n == whole.n == 3000
    relative = (merged.covariance() - whole.covariance()).norm() / whole.covariance().norm()
    assert relative < 1e-10
    reference = np.cov(x.numpy(), rowvar=False, bias=True)  # numpy's two-pass covariance
    assert np.abs(whole.covariance().numpy() - reference).max() / np.abs(reference).max() < 1e-10
    a, _ = principal_components(whole, 10)
    b, _ = principal_components(merged, 10)
    assert torch.allclose((a * b).sum(dim=1).abs(), torch.ones(10, dtype=torch.float64), atol=1e-8)


def test_pca_equals_sklearn_and_explains_the_eigenvalues_it_keeps():
    from sklearn.decomposition import PCA

    x = correlated(2000, 16)
    basis = fit_basis("pca", "conv", x, size=6)
    reference = PCA(n_components=6).fit(x.numpy())
    cosines = (basis.directions.double() @ torch.from_numpy(reference.components_).T).abs()
    assert torch.allclose(torch.diagonal(cosines), torch.ones(6, dtype=torch.float64), atol=1e-5)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False, bias=True)))[::-1]
    # held-out = fit data: the FVE is the share of the variance in the kept eigenvalues
    assert fve(basis, x) == pytest.approx(eigenvalues[:6].sum() / eigenvalues.sum(), abs=1e-5)
    responses = basis.encode(x.float())[0].double()
    assert ((responses**3).sum(dim=0) >= 0).all()  # oriented: the heavier tail positive
    assert basis.signed and basis.encode(x.float())[1] is None


def test_pca_null_directions_of_dead_channels_respond_exactly_zero():
    """A layer with 3 dead channels and 1 constant one has rank C - 4: its 4 null components are not
    determined by the data, and their responses (rounding noise otherwise) are exactly 0, so they count dead."""
    x = correlated(1500, 12)
    x[:, [2, 5, 7]] = 0.0  # dead channels
    x[:, 9] = 3.25  # a constant channel: zero variance too, but not zero values
    basis = fit_basis("pca", "conv", x, size=12)
    rank = np.linalg.matrix_rank(np.cov(x.numpy(), rowvar=False, bias=True))
    assert rank == 8 and basis.settings["null_directions"] == 12 - rank
    responses = basis.encode(x.float())[0]
    assert torch.equal(responses[:, rank:], torch.zeros(len(x), 12 - rank))  # the null ones, last
    assert (responses[:, :rank].abs().amax(dim=0) > 0.1).all()  # the others respond as before
    assert activity(basis, x)[1] == 12 - rank  # dead on the data
    assert fve(basis, x) == pytest.approx(1.0, abs=1e-6)  # K = C still reconstructs the data


def test_pca_directions_at_the_float32_rounding_of_the_vectors_are_null_and_small_real_ones_are_not():
    """Vectors of rank 9 in 12 channels, each value off by a float32 rounding (as activations computed in float32
    are): the 3 other directions hold only that rounding (variance about eps32² E[x²]), above the float64
    rounding of the covariance, and are null; a real direction with a variance 1e-8 of the others' is kept."""
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(2000, 8, generator=g, dtype=torch.float64) @ torch.randn(
        8, 12, generator=g, dtype=torch.float64
    )
    small = torch.randn(12, generator=g, dtype=torch.float64)
    x64 = x64 + 5.0 + 1e-4 * torch.randn(2000, 1, generator=g, dtype=torch.float64) * small / small.norm()
    eps32 = torch.finfo(torch.float32).eps
    x = (x64 * (1 + eps32 * torch.randn(x64.shape, generator=g, dtype=torch.float64))).float()
    basis = fit_basis("pca", "conv", x, size=12)
    variances = (
        np.array(basis.settings["explained_variance_ratio"]) * x.double().var(0, unbiased=False).sum().item()
    )
    second = (x.double() ** 2).mean(0).max().item()
    assert variances[8] > 1e-9  # the small real direction
    assert (
        variances[9:] > 12 * torch.finfo(torch.float64).eps * second
    ).all()  # the rounding's: above eps64's
    assert basis.settings["null_directions"] == 3
    responses = basis.encode(x)[0]
    assert torch.equal(responses[:, 9:], torch.zeros(len(x), 3)) and responses[:, 8].abs().max() > 1e-5


def test_unit_basis_is_the_identity_and_random_is_an_oriented_orthonormal_rotation():
    x = correlated(500, 12).float()
    unit = unit_basis("fc", 12)
    assert torch.equal(unit.encode(x)[0], x) and torch.equal(unit.decode(x), x)
    rows = random_rotation(12, 12, seed=3)
    assert torch.allclose(rows @ rows.T, torch.eye(12, dtype=torch.float64), atol=1e-12)
    assert torch.equal(rows, random_rotation(12, 12, seed=3)) and not torch.equal(
        rows, random_rotation(12, 12, 4)
    )
    basis = fit_basis("random", "fc", x, seed=3)
    assert fve(basis, x) == pytest.approx(1.0, abs=1e-5)  # a full rotation loses nothing
    assert ((basis.encode(x)[0].double() ** 3).sum(dim=0) >= 0).all()
    assert torch.equal(orient_signs(torch.tensor([[-3.0, 1.0], [1.0, 1.0]])), torch.tensor([-1.0, 1.0]))


def test_ica_recovers_independent_sources():
    generator = np.random.default_rng(0)
    sources = generator.laplace(size=(4000, 3))
    mixing = generator.normal(size=(8, 3))  # 3 sources seen through 8 channels
    x = torch.from_numpy(sources @ mixing.T)
    basis = fit_basis("ica", "conv", x, size=3, seed=0)
    assert stability(basis.directions, torch.from_numpy(mixing.T)) > 0.99
    assert fve(basis, x) == pytest.approx(1.0, abs=1e-6)


def sklearn_nmf(x: np.ndarray, size: int, seed: int):
    """scikit-learn's NMF as nmf_basis fits it (same settings: the same H), to read its NNLS transform."""
    from sklearn.decomposition import NMF

    return NMF(n_components=size, init="nndsvda", random_state=seed, max_iter=nmf.MAX_ITER).fit(x)


def nnls_fve(model, x: np.ndarray) -> float:
    """The FVE of NMF's own coefficients (sklearn's transform: the NNLS solution) on x."""
    return float(
        1 - ((x - model.inverse_transform(model.transform(x))) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    )


@contextlib.contextmanager
def one_thread():
    """Small BLAS calls by the thousand (the encoder's L-BFGS): two threads on a busy machine cost ~10x."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def test_nmf_refuses_negative_activations_and_its_encoder_is_a_relu_near_nnls():
    with pytest.raises(UsageError, match="non-negative"):
        fit_basis("nmf", "logits", correlated(100, 6, relu=False), size=3)
    x = correlated(1500, 12)
    with one_thread():
        basis = fit_basis("nmf", "conv", x, size=6, seed=0)
    response, pre = basis.encode(x.float())
    expected = x.float() @ basis.encoder_weight.T + basis.encoder_bias
    assert torch.allclose(pre, expected, atol=1e-5) and torch.equal(response, torch.relu(pre))
    # What the differentiable encoder costs against sklearn's own (non-differentiable) transform, same H.
    reference = sklearn_nmf(x.numpy(), 6, seed=0)
    assert np.allclose(basis.directions.numpy(), reference.components_, rtol=1e-5, atol=1e-6)
    best = nnls_fve(reference, x.numpy())  # NNLS: the best z >= 0 for each vector, up to sklearn's tolerance
    assert best - 0.005 < fve(basis, x) <= best + 1e-3


def test_nmf_encoder_at_k_equal_c_tracks_nnls_where_pinv_fails():
    from sklearn.linear_model import LinearRegression, Ridge

    x = correlated(1500, 32).numpy()
    fit, held = x[:1200], x[1200:]
    with one_thread():
        basis = fit_basis("nmf", "conv", torch.from_numpy(fit), size=32, seed=0)
        reference = sklearn_nmf(fit, 32, seed=0)
    h = reference.components_
    assert np.allclose(basis.directions.numpy(), h, rtol=1e-5, atol=1e-6)
    spread = ((held - held.mean(0)) ** 2).sum()
    old_x_hat = np.maximum(held @ np.linalg.pinv(h), 0) @ h  # the encoder before: relu(x pinv(H))
    assert 1 - ((held - old_x_hat) ** 2).sum() / spread < 0
    assert fve(basis, torch.from_numpy(held)) > nnls_fve(reference, held) - 0.01
    # ... with responses near NMF's own coefficients: as sparse (mean L0 within 15%), code R² above 0.8.
    response = basis.encode(torch.from_numpy(held).float())[0].double().numpy()
    nnls = reference.transform(held)
    assert abs((response > 0).sum(1).mean() / (nnls > 0).sum(1).mean() - 1) < 0.15
    assert 1 - ((response - nnls) ** 2).sum() / ((nnls - nnls.mean(0)) ** 2).sum() > 0.8
    # Step 2, independently: sklearn's ridge regression of the NNLS codes on the fit rows (the rule of
    # check_split, redrawn) with each lam of the grid; the recorded lam reconstructs the check rows best.
    order = np.random.default_rng(0).permutation(1200)
    rows, check = order[240:], order[:240]
    assert basis.settings["n_check"] == 240
    codes = reference.transform(fit)
    centred = fit[rows] - fit[rows].mean(0)
    unit = np.trace(centred.T @ centred) / 32

    def check_error(model) -> float:
        z = np.maximum(fit[check] @ model.coef_.T + model.intercept_, 0)
        return float(((z @ h - fit[check]) ** 2).sum())

    errors = {scale * unit: check_error((Ridge(alpha=scale * unit) if scale else LinearRegression()).fit(
        fit[rows], codes[rows])) for scale in nmf.RIDGE_SCALES}  # fmt: skip
    lam = min(errors, key=lambda grid_lam: abs(grid_lam - basis.settings["ridge"]))
    assert lam == pytest.approx(basis.settings["ridge"], rel=1e-9)
    assert errors[lam] <= min(errors.values()) * (1 + 1e-6)
    # Step 3 keeps the round that reconstructs the check rows best: no worse than its start, and as recorded.
    spread = ((fit[check] - fit[check].mean(0)) ** 2).sum()
    stored = basis.decode(basis.encode(torch.from_numpy(fit[check]).float())[0]).double().numpy()
    recorded = basis.settings["check_fve"]
    assert recorded == pytest.approx(1 - ((fit[check] - stored) ** 2).sum() / spread, abs=1e-4)
    assert recorded >= 1 - errors[lam] / spread - 1e-9


def test_kmeans_finds_the_directions_of_clustered_data():
    generator = np.random.default_rng(1)
    centres = np.abs(generator.normal(size=(4, 10)))
    labels = generator.integers(0, 4, 2000)
    lengths = generator.uniform(0.5, 3.0, size=(2000, 1))
    x = torch.from_numpy(lengths * (centres[labels] + 0.02 * generator.normal(size=(2000, 10))))
    basis = fit_basis("kmeans", "conv", x, size=4, seed=0)
    assert stability(basis.directions, torch.from_numpy(centres)) > 0.999
    response, pre = basis.encode(x.float())
    assert pre is None and torch.allclose(response, x.float() @ basis.directions.T)
    best = response.argmax(dim=1, keepdim=True)
    projection = response.gather(1, best) * basis.directions[best[:, 0]]
    assert torch.allclose(basis.decode(response), projection, atol=1e-5)


def test_sae_is_sparse_differentiable_and_learns_a_sparse_code():
    generator = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(48, 16, generator=generator), dim=1)
    codes = torch.rand(6000, 48, generator=generator) * (torch.rand(6000, 48, generator=generator) < 3 / 48)
    x = codes @ atoms
    basis = fit_basis("sae", "conv", x, size=64, top_k=4, seed=0, sae_training={"epochs": 15})
    assert basis.size == 64 and basis.encoder == "topk"
    assert fve(basis, x) > fve(
        fit_basis("pca", "conv", x, size=4), x
    )  # 4 active of 64 beat 4 fixed directions
    inputs = x[:32].clone().requires_grad_()
    response, pre = basis.encode(inputs)
    assert ((response != 0).sum(dim=1) <= 4).all() and pre.shape == (32, 64)
    pre[:, 0].sum().backward()  # AM climbs the pre-activation where the response is 0
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0
    mean_l0, dead = activity(basis, x)
    assert mean_l0 <= 4 and 0 <= dead <= 64
    assert "dead_at_end" in basis.settings


def test_vectors_are_validated_and_decode_by_least_squares():
    with pytest.raises(UsageError, match=r"expected shape K x 8, got \(3, 7\)"):
        vectors_basis("conv", torch.ones(3, 7), 8, "dirs.npy")
    with pytest.raises(UsageError, match=r"K x C matrix, got shape \(8,\)"):
        vectors_basis("conv", torch.ones(8), 8, "dirs.npy")
    with pytest.raises(UsageError, match=r"non-finite values in direction\(s\) \[1\]"):
        vectors_basis("conv", torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), 2)
    v = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    basis = vectors_basis("conv", v, 8)
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(basis.encode(x)[0], x @ v.T, atol=1e-5)
    projection = x.double() @ torch.linalg.pinv(v.double()) @ v.double()  # onto the span of the rows
    assert torch.allclose(basis.decode(basis.encode(x)[0]).double(), projection, atol=1e-4)


@pytest.mark.parametrize(("kind", "size", "message"), [
    ("pca", 9, r"--size 9 is larger than pca allows on conv: K <= C = 8"),
    ("ica", 9, r"K <= C = 8"),
    ("unit", 4, r"exactly C = 8"),
    ("kmeans", 500, r"the sample holds 100"),
    ("wavelets", 4, r"unknown basis kind 'wavelets'; valid kinds: unit, random, pca"),
])  # fmt: skip
def test_sizes_a_kind_does_not_allow_are_refused(kind, size, message):
    with pytest.raises(UsageError, match=message):
        check_size(kind, "conv", size, 8, n_vectors=100)


def test_state_round_trip_and_content_hash():
    x = correlated(400, 10)
    for kind in ("pca", "nmf", "sae"):
        basis = fit_basis(kind, "conv", x, size=None if kind == "sae" else 5, seed=1,
                          sae_training={"epochs": 2})  # fmt: skip
        state = basis.state_dict()
        arrays = {name: t.numpy() for name, t in state["tensors"].items()}  # what a store keeps
        again = Basis.from_state({"tensors": arrays, "meta": state["meta"], "name": "mine"})
        assert again.content_hash() == basis.content_hash()
        assert torch.equal(again.encode(x.float())[0], basis.encode(x.float())[0])
        assert fit_basis(kind, "conv", x, size=None if kind == "sae" else 5, seed=1,
                         sae_training={"epochs": 2}).content_hash() == basis.content_hash()  # fmt: skip
        again.center[0] += 1.0
        assert again.content_hash() != basis.content_hash()


def test_metrics_against_brute_force():
    x = correlated(800, 10)
    basis = fit_basis("nmf", "conv", x[:600], size=4, seed=0)
    held_out = x[600:]
    response = basis.encode(held_out.float())[0].numpy()
    metrics = basis_metrics(basis, held_out, refit=fit_basis("nmf", "conv", x[:600], size=4, seed=1))
    assert metrics["mean_l0"] == pytest.approx((response != 0).sum(axis=1).mean())
    assert metrics["dead"] == int((~(response != 0).any(axis=0)).sum())
    x_hat = basis.decode(torch.from_numpy(response)).double().numpy()
    h = held_out.numpy()
    assert metrics["fve"] == pytest.approx(
        1 - ((h - x_hat) ** 2).sum() / ((h - h.mean(0)) ** 2).sum(), abs=1e-6
    )
    assert 0 < metrics["stability"] <= 1
    # Hungarian: a permuted, sign-flipped copy is the same basis
    directions = torch.randn(7, 10, dtype=torch.float64)
    shuffled = (
        directions[torch.tensor([3, 0, 6, 1, 5, 2, 4])] * torch.tensor([1, -1, 1, -1, -1, 1, 1.0])[:, None]
    )
    assert stability(directions, shuffled) == pytest.approx(1.0)
    one = fit_basis("random", "fc", correlated(50, 64), seed=0)
    two = fit_basis("random", "fc", correlated(50, 64), seed=1)
    assert stability(one.directions, two.directions) < 0.5  # random rotations share nothing


def test_every_kind_is_fitted():
    x = correlated(300, 8)
    for kind in KINDS:
        extra = {"vectors": torch.eye(8)[:3]} if kind == "vectors" else {}
        basis = fit_basis(kind, "conv", x, seed=0, sae_training={"epochs": 1}, **extra)
        assert basis.kind == kind and basis.n_channels == 8
        assert basis.encode(x.float())[0].shape == (300, basis.size)
