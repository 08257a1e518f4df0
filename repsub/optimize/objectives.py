"""The objectives, vectorized over a batch where image b is optimized for unit units[b].

Each returns one value per image; maximizing their sum maximizes each image's own objective,
since image b's objective depends on image b alone.

What is *recorded* is the paper's objective on post-ReLU activations (`activation`, `inter_unit`).
What the optimizer *climbs* (`climbed`) may replace the unit's own term: a unit whose pre-activation
is negative everywhere has a post-ReLU value of exactly 0 and no gradient, so its image would never
move (repsub measured this for up to 90% of a layer's units: docs/science.md). OWN_TERMS:

- ``hybrid`` (default): the post-ReLU value while it is > 0 (a signed direction's response while it is not 0),
  else the pre-ReLU value, which has a gradient and pulls the unit out of zero; once it responds, the
  post-ReLU value takes over. While the unit is silent, a conv unit's pre-activation is read at its highest position (`pre_reduction`): its
  post-ReLU mean (or max) becomes > 0 exactly when one position's pre-activation does, so that is the
  shortest way out of zero (the spatial mean of the pre-activation left 17 of 17 silent units of the
  demo's conv3/conv4 at 0 after 48 steps, the max 2: docs/science.md).
- ``post``: the post-ReLU value always (the plain definition; stalls at 0).
- ``pre``: the pre-ReLU value always, reduced as the units are.

The other units of IAM's subtracted term stay post-ReLU in every case (pre-ReLU values there raise RS).
"""

from __future__ import annotations

import torch

from repsub.optimize.settings import OWN_TERMS as OWN_TERMS  # declared with the settings (light)


def pre_reduction(own_term: str, reduce: str) -> str:
    """How the optimizer reduces a conv unit's pre-activation over space for `own_term`, when the units are
    reduced by `reduce`: for hybrid's silent phase the reduction whose value is > 0 exactly when the unit's
    post-ReLU value is (the max over positions, or the centre itself for `center`); for `pre`, `reduce`."""
    if own_term == "hybrid":
        return "center" if reduce == "center" else "max"
    return reduce


def _own(layer: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    return layer.gather(1, units.reshape(-1, 1)).squeeze(1)


def activation(layer: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """AM: the unit's own activation x_i. layer [B, N], units [B] -> [B]."""
    return _own(layer, units)


def inter_unit(layer: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """IAM: x_i - mean_{j != i} x_j over the units of the same layer. layer [B, N], units [B] -> [B]."""
    own = _own(layer, units)
    others = (layer.sum(dim=1) - own) / (layer.shape[1] - 1)
    return own - others


METHODS = {"am": activation, "iam": inter_unit}


def own_term(post: torch.Tensor, pre: torch.Tensor | None, units: torch.Tensor, kind: str) -> torch.Tensor:
    """The unit's own term as the optimizer sees it (see OWN_TERMS); the post-ReLU value where the layer
    has no pre-activation (logits, raw module outputs)."""
    own_post = _own(post, units)
    if pre is None or kind == "post":
        return own_post
    own_pre = _own(pre, units)
    if kind == "pre":
        return own_pre
    # Post-ReLU values are >= 0, so != 0 is > 0 for units; a signed direction's response (which is < 0 as
    # often as > 0) is climbed itself: it is flat only where it is exactly 0.
    return torch.where(own_post != 0, own_post, own_pre)


def climbed(
    method: str, post: torch.Tensor, pre: torch.Tensor | None, units: torch.Tensor, kind: str
) -> torch.Tensor:
    """The objective the optimizer maximizes: the method's recorded objective with its own term replaced
    by `own_term(...)` (both methods are `own + a term of the other units`)."""
    return METHODS[method](post, units) - _own(post, units) + own_term(post, pre, units, kind)
