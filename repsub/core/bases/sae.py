"""A TopK sparse autoencoder (Gao et al. 2024, arXiv 2406.04093), trained on a sample of activation vectors.

    pre = (x - b_dec) @ W_encᵀ + b_enc        z = TopK(relu(pre))        x_hat = z @ W_dec + b_dec

W_dec's rows (the directions) are kept at unit norm; W_enc starts as W_decᵀ and b_dec at the data mean. The
loss is the reconstruction error normalized by the data's variance, plus the auxiliary loss (AuxK) that keeps
latents alive: the residual x - x_hat is reconstructed from the `aux_k` largest pre-activations of the latents
that have not fired for `dead_after` vectors, with weight 1/32. Latents dead at the end are counted
(`settings["dead_at_end"]`); the metrics count those never active on held-out data.

Written here rather than taken from `overcomplete` (0.3.0): its package cannot be imported beside this project's
matplotlib (3.11: its colormaps call `matplotlib.cm.get_cmap`, removed in 3.9), and it pulls in timm,
huggingface_hub and scikit-image; its TopKSAE is the same model (docs/performance.md compares the two).
"""

from __future__ import annotations

import time

import torch

from repsub.core.bases.basis import Basis

AUX_WEIGHT = 1 / 32


def train_topk_sae(
    sample: torch.Tensor,
    size: int,
    top_k: int,
    seed: int,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    dead_after: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict, float]:
    """Train on `sample` [N, C]; returns ({w_enc, b_enc, w_dec, b_dec} float32 on the CPU, the training's
    record, its seconds)."""
    generator = torch.Generator().manual_seed(seed)
    x_all = sample.detach().to(torch.float32).cpu()
    n, c = x_all.shape
    dead_after = dead_after or n  # a latent that has not fired over one pass of the sample is dead
    aux_k = min(2 * top_k, size)
    w_dec = torch.randn(size, c, generator=generator)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    params = {
        "w_enc": w_dec.clone(),
        "b_enc": torch.zeros(size),
        "w_dec": w_dec,
        "b_dec": x_all.mean(dim=0),
    }
    params = {name: p.to(device).requires_grad_() for name, p in params.items()}
    variance = x_all.var(dim=0, unbiased=False).sum().clamp_min(1e-12).to(device)
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    since_fired = torch.zeros(size, dtype=torch.int64, device=device)
    started, steps, loss = time.perf_counter(), 0, torch.zeros(())
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for first in range(0, n, batch_size):
            x = x_all[order[first : first + batch_size]].to(device)
            pre = (x - params["b_dec"]) @ params["w_enc"].T + params["b_enc"]
            kept = torch.topk(torch.relu(pre), top_k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, kept.indices, kept.values)
            x_hat = z @ params["w_dec"] + params["b_dec"]
            loss = (x - x_hat).pow(2).sum(dim=1).mean() / variance
            fired = (z > 0).any(dim=0)
            since_fired = torch.where(fired, 0, since_fired + len(x))
            dead = since_fired >= dead_after
            if dead.any():
                loss = loss + AUX_WEIGHT * _aux_loss(x - x_hat.detach(), pre, dead, aux_k, params["w_dec"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                params["w_dec"] /= params["w_dec"].norm(dim=1, keepdim=True).clamp_min(1e-12)
            steps += 1
    seconds = time.perf_counter() - started  # the training's wall time (the benchmark's throughput)
    record = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "steps": steps,
        "aux_k": aux_k,
        "dead_after": dead_after,
        "dead_at_end": int((since_fired >= dead_after).sum()),
        "final_loss": float(loss.detach()),
    }  # fmt: skip  (deterministic: it goes into the basis's settings, which its content hash covers)
    return {name: p.detach().cpu() for name, p in params.items()}, record, seconds


def _aux_loss(residual, pre, dead, aux_k, w_dec) -> torch.Tensor:
    """AuxK: the residual reconstructed from the largest pre-activations of the dead latents, normalized by the
    residual's own size."""
    k = min(aux_k, int(dead.sum()))
    masked = torch.where(dead, torch.relu(pre), torch.zeros_like(pre))
    kept = torch.topk(masked, k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, kept.indices, kept.values)
    error = (residual - z @ w_dec).pow(2).sum(dim=1).mean()
    return error / residual.pow(2).sum(dim=1).mean().clamp_min(1e-12)


def sae_basis(layer: str, sample: torch.Tensor, size: int, top_k: int, seed: int, **training) -> Basis:
    """A TopK SAE of `size` latents (`top_k` active per position) trained on `sample` [N, C]."""
    params, record, _ = train_topk_sae(sample, size, top_k, seed, **training)
    settings = {"seed": seed, "n_vectors": len(sample), "top_k": top_k, **record, "solver": "repsub TopK SAE"}
    return Basis(
        kind="sae", layer=layer, directions=params["w_dec"], encoder_weight=params["w_enc"],
        encoder_bias=params["b_enc"],
        center=params["b_dec"], encoder="topk", top_k=top_k, settings=settings,
    )  # fmt: skip
