"""AM's shortcut for directions: at each step, read each image's own direction only (repsub.optimize.own_unit
is the units' counterpart).

AM's objective for image b reads direction targets[b] alone, so the other K-1 responses get no gradient; yet
the readout computed all K of them at every position, forward and backward (an SAE at 4x: a 1x1 projection 4
times the layer's width, and its top-k). `OwnDirection` computes image b's response to its own direction:
`(x_b - center) . w_k + bias_k`, one dot product per position, and for a `topk` encoder takes which positions
keep the direction from an encoding of all K without a gradient (forward only, no backward: a topk response
needs all K to know its rank), only at the positions where it can matter. The values are the whole readout's up
to float rounding; only the steps use it, the start and the recorded forward read every direction (RS needs them
all).
"""

from __future__ import annotations

import torch


class OwnDirection:
    """A readout of one response per image: image b's response to direction `targets[b]` of `readout`
    (a fitted basis, repsub.core.bases, or a LinearReadout). Inputs x [B, ..., C] -> ([B, ..., 1], pre)."""

    K = 1

    def __init__(self, readout, targets: torch.Tensor, margin_everywhere: bool = False):
        self.readout, self.targets = readout, targets
        # A topk encoder's pre is the margin (topk_margin): climbed by the silent images only (the hybrid climbs
        # pre nowhere else), or by all (own term "pre").
        self.margin_everywhere = margin_everywhere
        self.name, self.layer, self.C = readout.name, getattr(readout, "layer", None), readout.C

    @staticmethod
    def applies(readout) -> bool:
        """Whether the shortcut knows this readout's encoder (a fitted basis, a LinearReadout)."""
        return (
            hasattr(readout, "encoder_weight") or hasattr(readout, "directions") and hasattr(readout, "bias")
        )

    def _affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x - center, weight [K, C], bias [K] or None) on x's device and dtype: y = (x - center) @ weight.T
        + bias, the readout's affine map."""
        r = self.readout
        if hasattr(r, "encoder_weight"):  # a Basis: (x - center) @ W.T + b
            x = x - r.center.to(x.device, x.dtype)
            weight, bias = r.encoder_weight, r.encoder_bias
        else:  # a LinearReadout: x @ D.T (+ b)
            weight, bias = r.directions, r.bias
        return x, weight.to(x.device, x.dtype), None if bias is None else bias.to(x.device, x.dtype)

    @staticmethod
    def _read(centred: torch.Tensor, weight, bias, directions: torch.Tensor) -> torch.Tensor:
        """[B, ..., 1]: y of direction directions[b] (a [B] index) or directions[b, ...] (one per position)."""
        if directions.dim() == 1:  # one direction per image: a batched matrix-vector product
            y = torch.einsum("b...c,bc->b...", centred, weight[directions])
            if bias is not None:
                y = y + bias[directions].reshape(-1, *[1] * (centred.dim() - 2))
        else:  # one per position: a dot product per position
            y = (centred * weight[directions]).sum(dim=-1)
            if bias is not None:
                y = y + bias[directions]
        return y.unsqueeze(-1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        centred, weight, bias = self._affine(x)
        targets = self.targets.to(x.device)
        pre = self._read(centred, weight, bias, targets)
        encoder = getattr(self.readout, "encoder", "linear")
        if encoder == "linear":
            return pre, None
        response = torch.relu(pre)
        if encoder == "topk" and self.readout.top_k < weight.shape[0]:  # else every positive y is kept
            # The competition is needed where a response can be kept (y > 0: elsewhere relu gives 0 whatever
            # the others), and for the margin at every position of the images that climb it: a third to a
            # half of the positions of a batch, where the encoding of all K and its top-k cost most of a step.
            competitor = torch.zeros(pre.shape[:-1], dtype=torch.long, device=pre.device)
            positive = pre.detach().squeeze(-1) > 0
            response = response * self._compete(
                centred, weight, bias, targets, positive, competitor
            ).unsqueeze(-1)
            climbing = (
                torch.ones(len(pre), dtype=torch.bool, device=pre.device)
                if self.margin_everywhere
                else response.detach().flatten(1).amax(dim=1) == 0  # silent: a response of 0 everywhere
            )
            if climbing.any():
                rest = climbing.reshape(-1, *[1] * (positive.dim() - 1)) & ~positive
                self._compete(centred, weight, bias, targets, rest, competitor)
                pre = self._margin(centred, weight, bias, pre, climbing, competitor)
        return response, pre

    def _compete(self, centred, weight, bias, targets, where: torch.Tensor, competitor: torch.Tensor):
        """Without a gradient, at the positions `where` ([B, ...] bool): the own direction's y and the k-th
        largest y of the *other* directions, the threshold it must pass to be kept. Writes whose that is into
        `competitor` there; returns where the own direction is kept ([B, ...] bool, False outside `where`):
        where fewer than top_k others are strictly above it, and y > 0 (topk itself differs only at an exact tie
        at the k-th place, where it picks arbitrarily).

        One encoding of all K and one top-k of the others, where a top-k of all would need its (k + 1)-th for a
        direction inside it: torch's top-k of 16 of 1,024 takes a partial sort, of 17 a selection, 2.3x the time
        (docs/performance.md)."""
        kept = torch.zeros_like(where)
        if not where.any():
            return kept
        with torch.no_grad():
            rows = centred.detach()[where]  # [n, C]
            every = rows @ weight.T if bias is None else torch.addmm(bias, rows, weight.T)
            index = targets.reshape(-1, *[1] * (where.dim() - 1)).expand(where.shape)[where].unsqueeze(1)
            own = every.gather(1, index)
            values, indices = torch.topk(every.scatter_(1, index, float("-inf")), self.readout.top_k, dim=1)
            competitor[where] = indices[:, -1]
            kept[where] = ((own >= values[:, -1:]) & (own > 0)).squeeze(1)
        return kept

    def _margin(self, centred, weight, bias, pre, climbing, competitor) -> torch.Tensor:
        """pre with the whole readout's topk margin (topk_margin) of the own direction at the `climbing` images
        (the silent ones: a response of 0 at every position; or all with `margin_everywhere`); elsewhere the
        own y, never climbed there (the hybrid climbs the response wherever it is > 0).

        The margin min(y, y - t) has t = y_c for one competitor c per position (the k-th largest of the others),
        so its gradient needs y_c alone: c is found without a gradient, then y_c is one dot product per position,
        as the own y is, where the whole readout's margin differentiates all K."""
        if climbing.all():
            return torch.minimum(pre, pre - self._read(centred, weight, bias, competitor))
        rows = climbing.nonzero().squeeze(1)
        threshold = self._read(centred[rows], weight, bias, competitor[rows])
        return pre.index_put((rows,), torch.minimum(pre[rows], pre[rows] - threshold))
