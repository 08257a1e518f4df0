"""TopK SAE fitting throughput (activation vectors per second) on this CPU, and against overcomplete's TopKSAE.

    PYTHONPATH=. .venv/bin/python -m benchmarks.sae_throughput [--channels 512] [--vectors 20000] [--expansion 4]
        [--top-k 64] [--epochs 2] [--threads 2] [--max-load L] [--against-overcomplete]

The vectors: post-ReLU-like, a sparse non-negative combination of 4 x C unit-norm atoms (8 active each) plus
noise, rectified; seeded. repsub's `repsub.core.bases.sae.train_topk_sae` trains on them (batch 256, Adam, AuxK)
and its wall time gives vectors per second (epochs x vectors / seconds); FVE and dead latents are measured on
2,000 held-out vectors. `--against-overcomplete` trains overcomplete 0.3.0's TopKSAE (its linear encoder, its
`train_sae` loop and `top_k_auxiliary_loss`, the same batches, Adam lr and epochs) for comparison; overcomplete
cannot be imported beside matplotlib 3.11 (its colormaps call `matplotlib.cm.get_cmap`), so the benchmark puts
that function back first (`pip install overcomplete` for this comparison only).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.machine import wait_for_quiet
from repsub.core.bases.basis import Basis
from repsub.core.bases.metrics import activity, fve
from repsub.core.bases.sae import train_topk_sae


def vectors(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(4 * channels, channels, generator=generator), dim=1)
    active = torch.rand(n, 4 * channels, generator=generator).argsort(dim=1)[:, :8]
    codes = torch.zeros(n, 4 * channels).scatter(1, active, torch.rand(n, 8, generator=generator) * 3)
    return torch.relu(codes @ atoms + 0.05 * torch.randn(n, channels, generator=generator))


def repsub_sae(x, held_out, size, top_k, epochs):
    started = time.perf_counter()
    params, record, seconds = train_topk_sae(x, size, top_k, seed=0, epochs=epochs)
    wall = time.perf_counter() - started
    basis = Basis(kind="sae", layer="bench", directions=params["w_dec"], encoder_weight=params["w_enc"],
                  encoder_bias=params["b_enc"], center=params["b_dec"], encoder="topk", top_k=top_k)  # fmt: skip
    return epochs * len(x) / seconds, wall, fve(basis, held_out), activity(basis, held_out)[1]


def overcomplete_sae(x, held_out, size, top_k, epochs):
    import matplotlib
    import matplotlib.cm

    matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap  # removed in matplotlib 3.9; overcomplete calls it
    from overcomplete.sae import TopKSAE, train_sae
    from overcomplete.sae.losses import top_k_auxiliary_loss

    torch.manual_seed(0)
    model = TopKSAE(x.shape[1], nb_concepts=size, top_k=top_k)
    loader = torch.utils.data.DataLoader(x, batch_size=256, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    train_sae(model, loader, top_k_auxiliary_loss, optimizer, nb_epochs=epochs, monitoring=0)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        _, z, x_hat = model(held_out)
    mean = held_out.mean(dim=0)
    explained = 1 - float((held_out - x_hat).pow(2).sum() / (held_out - mean).pow(2).sum())
    return epochs * len(x) / seconds, seconds, explained, int((~(z != 0).any(dim=0)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--vectors", type=int, default=20000)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-load", type=float, default=None)
    parser.add_argument("--against-overcomplete", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = vectors(args.vectors + 2000, args.channels)
    fit, held_out = x[: args.vectors], x[args.vectors :]
    size = args.expansion * args.channels
    print(f"C {args.channels}, K {size}, top-k {args.top_k}, {args.vectors} vectors x {args.epochs} epochs, "
          f"{args.threads} threads")  # fmt: skip
    cases = [("repsub", repsub_sae)] + (
        [("overcomplete", overcomplete_sae)] if args.against_overcomplete else []
    )
    for name, run in cases:
        load = wait_for_quiet(args.max_load)
        per_second, seconds, explained, dead = run(fit, held_out, size, args.top_k, args.epochs)
        print(f"{name:<13} {per_second:>9.0f} vectors/s  ({seconds:.1f} s)  held-out FVE {explained:.4f}  "
              f"dead {dead}/{size}  load {load:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
