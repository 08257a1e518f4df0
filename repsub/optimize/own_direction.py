"""AM's shortcut for directions: at each step, read each image's own direction only (repsub.optimize.own_unit
is the units' counterpart).

AM's objective for image b reads direction targets[b] alone, so the other K-1 responses get no gradient; yet
the readout computed all K of them at every position, forward and backward (an SAE at 4x: a 1x1 projection 4
times the layer's width, and its top-k). `OwnDirection` computes image b's response to its own direction:
`(x_b - center) . w_k + bias_k`, one dot product per position, and for a `topk` encoder takes which positions
keep the direction from the whole encoding run without a gradient (forward only, no backward: a topk response
needs all K to know its rank). The values are the whole readout's up to float rounding; only the steps use it,
the start and the recorded forward read every direction (RS needs them all).
"""

from __future__ import annotations

import torch


class OwnDirection:
    """A readout of one response per image: image b's response to direction `targets[b]` of `readout`
    (a fitted basis, repsub.core.bases, or a LinearReadout). Inputs x [B, ..., C] -> ([B, ..., 1], pre)."""

    K = 1

    def __init__(self, readout, targets: torch.Tensor, margin_everywhere: bool = False):
        self.readout, self.targets = readout, targets
        # A topk encoder's pre is the margin (topk_margin), which needs every direction with a gradient: computed
        # for the silent images only (the hybrid climbs pre nowhere else), or for all (own term "pre").
        self.margin_everywhere = margin_everywhere
        self.name, self.layer, self.C = readout.name, getattr(readout, "layer", None), readout.C

    @staticmethod
    def applies(readout) -> bool:
        """Whether the shortcut knows this readout's encoder (a fitted basis, a LinearReadout)."""
        return (
            hasattr(readout, "encoder_weight") or hasattr(readout, "directions") and hasattr(readout, "bias")
        )

    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        """[B, ..., 1]: each image's affine response to its own direction, before any nonlinearity."""
        r, idx = self.readout, self.targets.to(x.device)
        if hasattr(r, "encoder_weight"):  # a Basis: (x - center) @ W.T + b
            weight, bias = r.encoder_weight, r.encoder_bias
            x = x - r.center.to(x.device, x.dtype)
        else:  # a LinearReadout: x @ D.T (+ b)
            weight, bias = r.directions, r.bias
        w = weight.to(x.device, x.dtype)[idx]  # [B, C]
        own = torch.einsum("b...c,bc->b...", x, w).unsqueeze(-1)
        if bias is not None:
            own = own + bias.to(x.device, x.dtype)[idx].reshape(-1, *[1] * (x.dim() - 1))
        return own

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        pre = self._pre(x)
        encoder = getattr(self.readout, "encoder", "linear")
        if encoder == "linear":
            return pre, None
        response = torch.relu(pre)
        if encoder == "topk":  # kept where the whole encoding keeps it (its rank among all K: no gradient)
            every, own = self._every(x)
            kept = ((every > own).sum(dim=-1, keepdim=True) < self.readout.top_k) & (own > 0)
            response = response * kept
            pre = self._margin(x, pre, response, every, own)
        return response, pre

    def _every(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, ..., K], [B, ..., 1]) without a gradient: every direction's y, and the own direction's y read
        from it (the same rounding).

        What a topk encoder's membership needs: counting the directions strictly above the own one (fewer than
        top_k) gives it without sorting, one comparison and a sum over K per position, where `torch.topk` over
        K = 4C took a third of a 4x SAE's AM step at conv3_3 (docs/performance.md). Only an exact tie at the
        k-th place can differ, where topk itself picks arbitrarily."""
        with torch.no_grad():
            every = self.readout.affine(x.detach())
            index = self.targets.to(x.device).reshape(-1, *[1] * (x.dim() - 1))
            return every, every.gather(-1, index.expand(*x.shape[:-1], 1))

    def _margin(self, x, pre, response, every, own) -> torch.Tensor:
        """pre with the whole readout's topk margin (topk_margin) of the own direction at the silent images (a
        response of 0 at every position), or at all with `margin_everywhere`; elsewhere the own y, never climbed
        there (the hybrid climbs the response wherever it is > 0).

        The margin min(y, y - t) has t = y_c for one competitor c per position (the k-th largest of the others),
        so its gradient needs y_c alone: c is found without a gradient, then y_c is one dot product per position,
        as the own y is, where the whole readout's margin differentiates all K."""
        silent = response.detach().flatten(1).amax(dim=1) == 0
        chosen = torch.ones_like(silent) if self.margin_everywhere else silent
        r, k = self.readout, self.readout.top_k
        if not chosen.any() or k >= every.shape[-1]:
            return pre  # every positive y kept: the margin is y
        rows = chosen.nonzero().squeeze(1)
        with torch.no_grad():
            values, indices = torch.topk(every[rows], k + 1, dim=-1)
            in_top = own[rows] >= values[..., k - 1 : k]  # then the others' k-th largest is the (k + 1)-th
            competitor = torch.where(in_top, indices[..., k:], indices[..., k - 1 : k]).squeeze(-1)
        centred = x[rows] - r.center.to(x.device, x.dtype)
        weight, bias = r.encoder_weight.to(x.device, x.dtype), r.encoder_bias.to(x.device, x.dtype)
        threshold = ((centred * weight[competitor]).sum(dim=-1) + bias[competitor]).unsqueeze(-1)
        return pre.index_put((rows,), torch.minimum(pre[rows], pre[rows] - threshold))
