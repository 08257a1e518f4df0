"""The unit catalog: which module outputs a model's units are read from, and any other module by name.

A catalog rule picks (name, module, how it is read) from the model and the facts of one probing forward
(repsub.models.probe); the unit count, the kind of output and the ReLU behind it come from those facts. The
rules, one per family of architectures:

- `relu_sequence` (the paper's models, VGG, AlexNet): every Conv2d/Linear layer read after the ReLU that follows
  it in the forward, the classifier's last layer as logits. Named conv1, conv2, ... fc5 (`flat`) or, for VGG,
  by block: conv1_1 ... conv5_3, fc6, fc7, fc8 (`blocks`: a max pool ends a block).
- `residual_blocks` (ResNet, ResNeXt, Wide ResNet, RegNet): the stem after its ReLU, every residual block's
  output (after its final ReLU), the fc logits. Blocks are named by module path (layer2.0).
- `stages` (every other family, and a custom module given without layers): the top-level stages of the feature
  trunk (the children of `features`, `layers`, `trunk_output`, `blocks` or `encoder.layers`, after `stem` if
  there is one; else the model's own children), then the logits. Pooling, dropout and identity stages are
  left out, and a stage directly followed by a normalization or an activation is read after it instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from torch import nn

from repsub.errors import UsageError
from repsub.models.layers import UnitLayer
from repsub.models.probe import ForwardFacts, ModuleFacts

# (layer name, module path, how it is read: "relu", "block", "logits" or "module")
Choice = tuple[str, str, str]
CatalogRule = Callable[[nn.Module, ForwardFacts], list[Choice]]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten)
_ELEMENTWISE = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish)
TRUNKS = ("features", "layers", "trunk_output", "blocks", "encoder.layers")


def unit_shape(facts: ModuleFacts) -> tuple[str, int] | None:
    """(kind, units) of a module's output, or None when it does not hold units."""
    shape = facts.shape
    if shape is None or len(shape) not in (2, 3, 4):
        return None
    if len(shape) == 2:
        return "linear", shape[1]
    if len(shape) == 3:
        return "tokens", shape[2]
    return ("nhwc", shape[3]) if facts.layout == "nhwc" else ("conv", shape[1])


def layer_at(name: str, facts: ModuleFacts, hint: str) -> UnitLayer:
    """The layer read at one module. The read is the truth of the forward: "relu"/"block" only when a ReLU
    produced the very output (the probe saw it), else "logits" where the rule says so, else "module"."""
    kind, units = unit_shape(facts)
    if facts.relu is not None:
        read = "block" if hint == "block" else "relu"
    else:
        read = "logits" if hint == "logits" else "module"
    return UnitLayer(name=name, n_units=units, module=facts.path, kind=kind, read=read, relu=facts.relu,
                     calls=facts.calls, order=facts.order)  # fmt: skip


def relu_sequence(naming: str = "flat") -> CatalogRule:
    def rule(model: nn.Module, facts: ForwardFacts) -> list[Choice]:
        modules = dict(model.named_modules())
        found: list[tuple[str, str, str]] = []  # (conv | fc, ReLU path, block_index)
        pending: str | None = None  # the Conv2d/Linear awaiting its ReLU
        block, in_block = 1, 0
        for f in facts.ordered():
            module = modules[f.path]
            if list(module.children()) or f.path == facts.logits:
                continue
            if isinstance(module, nn.Conv2d | nn.Linear):
                pending = "conv" if isinstance(module, nn.Conv2d) else "fc"
            elif isinstance(module, nn.MaxPool2d) and in_block:
                block, in_block = block + 1, 0
            elif isinstance(module, nn.ReLU) and pending:
                in_block += pending == "conv"
                found.append((pending, f.path, f"{block}_{in_block}"))
                pending = None
        convs = [(path, where) for kind, path, where in found if kind == "conv"]
        fcs = [path for kind, path, _ in found if kind == "fc"]
        if naming == "blocks":  # VGG: conv1_1 ... conv5_3, then fc6 (the block after the last)
            choices = [(f"conv{where}", path, "relu") for path, where in convs]
            first_fc = block + (in_block > 0)
        else:
            choices = [(f"conv{i}", path, "relu") for i, (path, _) in enumerate(convs, 1)]
            first_fc = len(convs) + 1
        choices += [(f"fc{first_fc + i}", path, "relu") for i, path in enumerate(fcs)]
        if facts.logits:
            choices.append((f"fc{first_fc + len(fcs)}", facts.logits, "logits"))
        return choices

    return rule


def residual_blocks(stem: tuple[str, str], stages: Callable[[nn.Module], list[str]]) -> CatalogRule:
    """stem: (layer name, module path); stages: the module paths whose children are the residual blocks."""

    def rule(model: nn.Module, facts: ForwardFacts) -> list[Choice]:
        modules = dict(model.named_modules())
        choices = [(stem[0], stem[1], "relu")]
        for stage in stages(model):
            choices += [
                (f"{stage}.{child}", f"{stage}.{child}", "block")
                for child, _ in modules[stage].named_children()
            ]
        return choices + ([(facts.logits, facts.logits, "logits")] if facts.logits else [])

    return rule


def stages(model: nn.Module, facts: ForwardFacts) -> list[Choice]:
    modules = dict(model.named_modules())
    trunk = next((t for t in TRUNKS if t in modules and list(modules[t].children())), "")
    paths = [f"{trunk}.{child}" if trunk else child for child, _ in modules[trunk].named_children()]
    if trunk and "stem" in modules:
        paths.insert(0, "stem")
    logits_order = facts.modules[facts.logits].order if facts.logits else None
    ran = sorted(
        (facts.modules[p] for p in paths if p in facts.modules and p != facts.logits),
        key=lambda f: f.order,
    )
    ran = [f for f in ran if logits_order is None or f.order < logits_order]
    choices: list[Choice] = []
    for i, f in enumerate(ran):
        if isinstance(modules[f.path], _POOLS + _PASS_THROUGH) or unit_shape(f) is None:
            continue
        if i + 1 < len(ran) and isinstance(modules[ran[i + 1].path], _ELEMENTWISE):
            continue  # read after its normalization / activation
        choices.append((f.path, f.path, "module"))
    return choices + ([(facts.logits, facts.logits, "logits")] if facts.logits else [])


class Catalog:
    """A model's default layers, and any other module of it read by name (`select`).

    Layers resolved by module name are remembered, so a run records them with the catalog (`records`)."""

    def __init__(self, model_name: str, layers: list[UnitLayer], facts: ForwardFacts | None):
        self.model_name = model_name
        self.layers = list(layers)
        self.facts = facts
        self.extra: dict[str, UnitLayer] = {}

    @classmethod
    def from_rule(cls, model_name: str, model: nn.Module, facts: ForwardFacts, rule: CatalogRule) -> Catalog:
        layers = [layer_at(name, facts.modules[path], hint) for name, path, hint in rule(model, facts)]
        return cls(model_name, layers, facts)

    def known(self) -> list[UnitLayer]:
        """The catalog and the layers resolved by module name, in forward order."""
        return sorted([*self.layers, *self.extra.values()], key=lambda layer: layer.order)

    def select(self, names: Iterable[str] | None) -> list[UnitLayer]:
        """The layers named (catalog names or module paths), in forward order; all of the catalog for none.
        A module that a catalog layer reads is that layer. Unknown names list the valid ones."""
        names = [n for n in (names or [])]
        if not names:
            return list(self.layers)
        found, unknown = {}, []
        for name in names:
            layer = self._resolve(name)
            if layer is None:
                unknown.append(name)
            else:
                found[layer.name] = layer
        if unknown:
            raise UsageError(self._unknown_message(unknown))
        return sorted(found.values(), key=lambda layer: layer.order)

    def layer(self, name: str) -> UnitLayer:
        return self.select([name])[0]

    def records(self, also: Iterable[str] = ()) -> list[dict]:
        """The manifest's catalog: the default layers, those read by module name, and `also` (names an earlier
        command of the run used), each with its depth (forward position among them)."""
        for name in also:
            self._resolve(name, quiet=True)
        return [layer.record(depth) for depth, layer in enumerate(self.known())]

    def readable_modules(self) -> list[UnitLayer]:
        """Every module whose output holds units, read as `--layers NAME` would read it, in forward order."""
        layers = []
        for f in self.facts.ordered() if self.facts is not None else []:
            if unit_shape(f) is not None:
                layers.append(self._resolve(f.path))
        return layers

    def _resolve(self, name: str, quiet: bool = False) -> UnitLayer | None:
        for layer in self.layers:
            if name in (layer.name, layer.module):
                return layer
        if name in self.extra:
            return self.extra[name]
        if self.facts is None or name not in self.facts.names:  # (no facts: a hand-built catalog)
            return None
        facts = self.facts.modules.get(name)
        problem = None
        if facts is None:
            problem = (
                f"never runs in the forward (in eval mode, at {self.facts.image_size} px): it holds no units"
            )
        elif unit_shape(facts) is None:
            shape = "not a tensor" if facts.shape is None else f"a tensor of shape {list(facts.shape)}"
            problem = f"outputs {shape}: units are read from outputs [B, C, H, W], [B, N] or [B, T, D]"
        if problem:
            if quiet:
                return None
            raise UsageError(f"module {name} of {self.model_name} {problem}")
        hint = "logits" if name == self.facts.logits else "module"
        self.extra[name] = layer_at(name, facts, hint)
        return self.extra[name]

    def _unknown_message(self, unknown: list[str]) -> str:
        modules = self.facts.names if self.facts is not None else ()
        close = sorted({m for n in unknown for m in difflib.get_close_matches(n, modules, n=3)})
        return (
            f"unknown layer(s) {', '.join(unknown)} for {self.model_name}; valid layers: "
            f"{brief([layer.name for layer in self.layers])}; or the name of any module of the model whose "
            f"output holds units (`repsub layers --model {self.model_name} --modules` lists them)"
            + (f"; closest modules: {', '.join(close)}" if close else "")
        )


def brief(names: list[str], limit: int = 24) -> str:
    """A list of names, shortened in the middle when long."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:16])}, ... ({len(names) - 20} more), {', '.join(names[-4:])}"
