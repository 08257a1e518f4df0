"""How often AM/IAM of basis directions fails (status != ok), per layer, basis and method (issue 18's goal: at
most 1% of alive directions). A PCA basis per layer (the top K principal directions of the layer's values per
position over generated images, centred, signed, oriented so their largest responses are positive) and a
random orthonormal basis, on the paper's shallow CNN at 32 px.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/direction_statuses.py [--weights random|PATH] [--steps 256]
"""

from __future__ import annotations

import argparse
import collections
import tempfile

import torch

from repsub.capture.reader import LayerCapture, channels_last
from repsub.core.readout import LinearReadout
from repsub.data.sources import open_source
from repsub.data.synthetic import make_image_folder
from repsub.models import load_model
from repsub.optimize import OptimSettings, optimize_units


def layer_values(model, layer, batches) -> torch.Tensor:
    """The layer's values at every position of every image: [P, C]."""
    parts = []
    with torch.no_grad(), LayerCapture(model.module, [layer], reduce=None) as capture:
        for images, _ in batches:
            maps = capture(images).activations[layer.name]
            parts.append(channels_last(maps, layer.kind).reshape(-1, layer.n_units))
    return torch.cat(parts)


def pca(values: torch.Tensor, k: int, layer: str) -> LinearReadout:
    centred = values - values.mean(0)
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    return LinearReadout(vh[:k].float(), name="pca", layer=layer).oriented(values)


def random_basis(c: int, k: int, layer: str, values: torch.Tensor) -> LinearReadout:
    q, _ = torch.linalg.qr(torch.randn(c, c, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return LinearReadout(q.T[:k].float(), name="random", layer=layer).oriented(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default="random")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--layers", default="conv1,conv2,conv3,conv4,fc5")
    args = parser.parse_args()
    model = load_model("shallow_cnn", weights=args.weights, seed=0, num_classes=10)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_image_folder(f"{tmp}/images", num_classes=10, images_per_class=6, size=36)
        source = open_source(folder, 32, model.mean, model.std, model.resize_ratio)
        batches = list(source.batches(30, workers=0))
    settings = OptimSettings(steps=args.steps, image_size=32)
    counts = collections.Counter()
    for name in args.layers.split(","):
        layer = model.layer(name)
        values = layer_values(model, layer, batches)
        k = min(args.k, layer.n_units)
        for readout in (pca(values, k, name), random_basis(layer.n_units, k, name, values)):
            for method in ("am", "iam"):
                result = optimize_units(model, layer, list(range(k)), method, settings, progress=False,
                                        readout=readout)  # fmt: skip
                statuses = collections.Counter(result.status.tolist())
                counts[(readout.name, method, "total")] += k
                counts[(readout.name, method, "not ok")] += k - statuses["ok"]
                print(f"{name:6s} {readout.name:7s} {method:4s} {dict(statuses)}", flush=True)
    for basis in ("pca", "random"):
        for method in ("am", "iam"):
            total, bad = counts[(basis, method, "total")], counts[(basis, method, "not ok")]
            print(f"{basis:7s} {method:4s}: {bad} of {total} directions not ok ({100 * bad / total:.1f}%)")


if __name__ == "__main__":
    main()
