"""LPIPS embeddings of images (Zhang et al. 2018, the `lpips` package): one vector per image whose squared
Euclidean distance to another's is their LPIPS distance, so the 2AFC compares images without a forward per pair.

LPIPS(x, y) = sum over the backbone's layers l of mean over positions of sum over channels c of
w_lc (x̂_lc - ŷ_lc)^2, with x̂ the layer's features unit-normalized over channels and w_l >= 0 the package's
learned linear weights. With e_l(x) = x̂_l * sqrt(w_l / positions_l), flattened and concatenated over layers,
LPIPS(x, y) = |e(x) - e(y)|^2 (repsub.core.interpretability.lpips_similarity).

The linear weights ship in the `lpips` wheel; the backbone's (torchvision's AlexNet or VGG16 on ImageNet) are read
from the torch hub cache, never downloaded: where they are absent the error names the file to place. A backbone
state file, or `random:SEED` (seeded random backbone weights: a test of the plumbing only), can be given instead.
Images are compared at LPIPS_SIDE px (the BAPPS patches' size; AlexNet needs more than a 16 px thumbnail).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from repsub.errors import UsageError
from repsub.models.weights import load_state_file

LPIPS_SIDE = 64
LPIPS_NETS = ("alex", "vgg")
_BACKBONES = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights")}


def backbone_cache_path(net: str) -> Path:
    """Where torchvision keeps the backbone's ImageNet weights: torch.hub.get_dir()/checkpoints/<file>."""
    import torchvision.models as tv

    weights = getattr(tv, _BACKBONES[net][1]).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def backbone_state(net: str, weights: str) -> dict[str, torch.Tensor]:
    """The backbone's state dict: "imagenet" (from the torch hub cache) or a state file."""
    import torchvision.models as tv

    architecture, enum = _BACKBONES[net]
    if weights == "imagenet":
        path = backbone_cache_path(net)
        if not path.is_file():
            url = getattr(tv, enum).IMAGENET1K_V1.url
            raise UsageError(
                f"--similarity lpips ({net}) needs torchvision's ImageNet {architecture} weights at {path}, "
                f"which is absent (they are not downloaded here): place the file {path.name} (from {url}) "
                "there, or give --lpips-weights PATH of the backbone's state dict (or random:SEED, random "
                "weights, to test the plumbing only)"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(
                f"--lpips-weights {weights!r}: no such file (valid: imagenet, a path, random:SEED)"
            )
    return load_state_file(path)


class LpipsEmbedder:
    """LPIPS embeddings (module docstring) of `net` ("alex", "vgg") with backbone `weights` (backbone_state)."""

    def __init__(self, net: str = "alex", weights: str = "imagenet", device: str = "cpu"):
        if net not in LPIPS_NETS:
            raise UsageError(f"--lpips-net {net!r}; valid backbones: {', '.join(LPIPS_NETS)}")
        import lpips

        seed = weights.removeprefix("random:") if weights.startswith("random:") else None
        if seed is not None and not seed.isdigit():
            raise UsageError(f"--lpips-weights {weights!r}: random:SEED takes a non-negative integer seed")
        state = None if seed is not None else backbone_state(net, weights)
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            # the package asks torchvision with its deprecated `pretrained=False`; random:SEED is the backbone's
            # initialization after torch.manual_seed(SEED) (the first random draws of the construction)
            warnings.simplefilter("ignore", UserWarning)
            torch.manual_seed(int(seed or 0))
            metric = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        if state is not None:
            own = {name: f"features.{name.split('.', 1)[1]}" for name, _ in metric.net.named_parameters()}
            missing = sorted(key for key in own.values() if key not in state)
            if missing:
                raise UsageError(f"--lpips-weights {weights!r} is not a {_BACKBONES[net][0]} state dict: it "
                                 f"lacks {', '.join(missing[:4])}")  # fmt: skip
            metric.net.load_state_dict({name: state[key] for name, key in own.items()})
        self.metric = metric.eval().to(device)
        self.device = device

    def _input(self, images: np.ndarray) -> torch.Tensor:
        """[B, H, W, 3] in [0, 1] -> [B, 3, LPIPS_SIDE, LPIPS_SIDE] in [-1, 1], as LPIPS takes them."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        if x.shape[-1] != LPIPS_SIDE or x.shape[-2] != LPIPS_SIDE:
            x = F.interpolate(x, size=(LPIPS_SIDE, LPIPS_SIDE), mode="bilinear", align_corners=False)
        return (x * 2 - 1).to(self.device)

    @torch.no_grad()
    def embed(self, images: np.ndarray, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """[B, H, W, 3] in [0, 1] -> [B, D] float32 embeddings."""
        import lpips

        parts = []
        for start in tqdm(range(0, len(images), batch_size), desc="lpips embeddings", unit="batch",
                          disable=not progress):  # fmt: skip
            outs = self.metric.net(self.metric.scaling_layer(self._input(images[start : start + batch_size])))
            layers = []
            for out, lin in zip(outs, self.metric.lins, strict=True):
                weight = lin.model[-1].weight.view(1, -1, 1, 1)  # [1, C, 1, 1], >= 0
                scale = (weight / (out.shape[-1] * out.shape[-2])).sqrt()
                layers.append((lpips.normalize_tensor(out) * scale).flatten(1))
            parts.append(torch.cat(layers, 1).cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def distance(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """The package's own LPIPS forward on image pairs ([B, H, W, 3] in [0, 1]): [B]."""
        return self.metric(self._input(first), self._input(second)).flatten().cpu().numpy()
