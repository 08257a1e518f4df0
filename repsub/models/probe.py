"""What one forward says about every module: output shape, calls, forward order, the ReLU behind its output.

The catalog is read from these facts, never guessed from the order modules were defined in. The probe runs on
the meta device (shapes only: no memory, no arithmetic): a model built on meta is called as it is, a model
with real weights is called with meta stand-ins for its parameters and buffers (`torch.func.functional_call`,
nothing copied). A model that cannot run on meta (a plain tensor attribute, data-dependent Python) is probed
with one real image instead.

A second probe 32 px larger tells the layout of 4-D outputs apart: the two dimensions that grow with the
image are spatial, the one that stays is channels ([B, C, H, W] or [B, H, W, C], as in Swin). Models that take
one input size only (ViT) keep the conventional [B, C, H, W] reading.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from repsub.errors import UsageError


@dataclass(frozen=True)
class ModuleFacts:
    path: str
    type_name: str
    shape: tuple[int, ...] | None  # output of the last call, batch of one (None: not a tensor)
    calls: int  # calls in one forward
    order: int  # completion index of the last call among all module calls of the forward
    relu: str | None  # the nn.ReLU whose last call returned exactly this module's output (itself for a ReLU)
    layout: str | None = None  # 4-D outputs: "nchw" or "nhwc" when the second probe told them apart


@dataclass(frozen=True)
class ForwardFacts:
    image_size: int
    modules: dict[str, ModuleFacts]  # the modules that ran (the root, path "", excluded)
    names: tuple[str, ...]  # every named module, run or not
    logits: str | None  # the innermost module whose output is the model's output
    output_shape: tuple[int, ...] | None

    def ordered(self) -> list[ModuleFacts]:
        return sorted(self.modules.values(), key=lambda f: f.order)


def probe_forward(model: nn.Module, image_size: int, label: str = "the model") -> ForwardFacts:
    """Run `model` (in eval mode) on one image of `image_size` px and record every module's facts."""
    was_training = model.training
    model.eval()
    try:
        try:
            records, output = _recorded_forward(model, image_size)
        except Exception as err:  # the model's own code raised: a size it does not take, a bug...
            raise UsageError(
                f"the forward of {label} fails on a {image_size} px image ({type(err).__name__}: {err}); "
                "give the input size it takes"
            ) from err
        try:
            larger, _ = _recorded_forward(model, image_size + 32, real_fallback=False)
        except Exception:  # one input size only (ViT, MaxViT), or not on meta: layouts stay unknown
            larger = {}
    finally:
        model.train(was_training)
    modules = {
        path: ModuleFacts(
            path=path, type_name=type(rec["module"]).__name__, shape=rec["shape"], calls=rec["calls"],
            order=rec["order"], relu=rec["relu"],
            layout=_layout(rec["shape"], larger.get(path, {}).get("shape")),
        )
        for path, rec in records.items()
    }  # fmt: skip
    return ForwardFacts(
        image_size=image_size,
        modules=modules,
        names=tuple(path for path, _ in model.named_modules() if path),
        logits=_logits(records, output),
        output_shape=tuple(output.shape) if isinstance(output, torch.Tensor) else None,
    )


def _recorded_forward(
    model: nn.Module, image_size: int, real_fallback: bool = True
) -> tuple[dict[str, dict], object]:
    records: dict[str, dict] = {}
    counter = itertools.count()
    relu_outputs: dict[str, tuple[int, object]] = {}  # ReLU path -> (call index, output of its last call)

    def hook(path: str, module: nn.Module, _inputs, output) -> None:
        index = next(counter)
        rec = records.setdefault(path, {"module": module, "calls": 0})
        rec["calls"] += 1
        rec["order"] = index
        rec["output"] = output  # kept (meta tensors hold no memory): identity tests below and for logits
        rec["shape"] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        if isinstance(module, nn.ReLU):
            relu_outputs[path] = (index, output)
            rec["relu"] = path
        else:  # the latest ReLU call whose very output this module returns (inplace or not)
            produced = [(i, p) for p, (i, out) in relu_outputs.items() if out is output]
            rec["relu"] = max(produced)[1] if produced else None

    handles = [
        module.register_forward_hook(lambda m, i, o, path=path: hook(path, m, i, o))
        for path, module in model.named_modules()
        if path
    ]
    try:
        with torch.no_grad():
            output = _call(model, image_size, real_fallback)
    finally:
        for handle in handles:
            handle.remove()
    return records, output


def _call(model: nn.Module, image_size: int, real_fallback: bool):
    tensors = dict(_named_tensors(model))
    if all(t.is_meta for t in tensors.values()):
        return model(torch.empty(1, 3, image_size, image_size, device="meta"))
    stand_ins = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    try:
        return functional_call(model, stand_ins, (torch.zeros(1, 3, image_size, image_size, device="meta"),))
    except (NotImplementedError, RuntimeError):  # code that needs real values: one real image
        if not real_fallback:
            raise
        device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
        return model(torch.zeros(1, 3, image_size, image_size, device=device))


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def _layout(shape, larger) -> str | None:
    if shape is None or larger is None or len(shape) != 4 or len(larger) != 4:
        return None
    grew = tuple(a != b for a, b in zip(shape[1:], larger[1:], strict=True))
    return {(False, True, True): "nchw", (True, True, False): "nhwc"}.get(grew)


def _logits(records: dict[str, dict], output) -> str | None:
    """The innermost module that returns the model's output (the classifier), else the last module whose
    output has as many values as the model's (squeezenet pools its logits, then flattens them)."""
    if not isinstance(output, torch.Tensor):
        return None
    same = [p for p, rec in records.items() if rec["output"] is output]
    if not same:
        size = math.prod(output.shape[1:])
        sized = [p for p, rec in records.items() if rec["shape"] and math.prod(rec["shape"][1:]) == size]
        if not sized:
            return None
        last = records[max(sized, key=lambda p: records[p]["order"])]["output"]
        same = [p for p, rec in records.items() if rec["output"] is last]
    return min(same, key=lambda p: records[p]["order"])
