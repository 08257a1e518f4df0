"""A model cut in two at a layer's read point: `suffix(*prefix(x)) == model(x)`, for any traceable model.

Importance by ablation runs the network's tail many times on the same images (once per ablated unit);
recomputing the head each time would cost a full forward per unit. The model is traced with torchvision's
feature-extraction tracer (torch.fx, leaf modules named by their path) and the graph split at the node
that produces the layer's output. `prefix(x)` returns every tensor that crosses the cut (the layer's
output and, in models with skip connections past it, the others), `suffix` takes them and returns the
logits. The layer's output is the node of the read module's *last* call (what `LayerCapture` reads: a
ResNet block's ReLU runs twice); for a block (a module with children) it is the last node inside it.
"""

from __future__ import annotations

import re

import torch
from torch import fx, nn

from repsub.errors import UsageError


def _trace(model: nn.Module) -> tuple[fx.Graph, dict[fx.Node, str]]:
    from torchvision.models import feature_extraction as fe

    tracer = fe.NodePathTracer(**fe._set_default_tracer_kwargs(None))
    graph = tracer.trace(model)
    return graph, dict(tracer.node_to_qualname)


def _output_node(nodes: list[fx.Node], qualnames: dict[fx.Node, str], module: str, is_leaf: bool) -> fx.Node:
    """The node of the module's last call: the tracer names a leaf module's calls `path`, `path_1`, ...;
    a block's nodes are named by the paths inside it."""
    if is_leaf:
        call = re.compile(re.escape(module) + r"(_\d+)?")
        found = [n for n in nodes if call.fullmatch(qualnames.get(n, ""))]
    else:
        found = [n for n in nodes if qualnames.get(n, "").startswith(module + ".")]
    if not found:
        raise UsageError(f"module {module!r} produces no node in the traced forward: it never runs")
    return found[-1]


class SplitModel:
    """`model` split after `module` (a dotted module path): `prefix(x) -> tuple of crossing tensors`,
    `suffix(*crossing) -> output`; `crossing_index` is the position of the module's output among them."""

    def __init__(self, model: nn.Module, module: str):
        graph, qualnames = _trace(model)
        nodes = list(graph.nodes)
        target = dict(model.named_modules()).get(module)
        if target is None:
            raise UsageError(f"model has no module {module!r}")
        cut = _output_node(nodes, qualnames, module, is_leaf=not list(target.children()))
        position = nodes.index(cut)
        head, tail = nodes[: position + 1], nodes[position + 1 :]
        tail_set = set(tail)
        crossing = [n for n in head if n.op != "output" and any(user in tail_set for user in n.users)]
        if cut not in crossing:
            raise UsageError(f"the output of module {module!r} is not used by the rest of the network")
        self.crossing_index = crossing.index(cut)
        self.prefix = fx.GraphModule(model, self._graph(head, [], crossing))
        self.suffix = fx.GraphModule(model, self._graph(tail, crossing, None))

    @staticmethod
    def _graph(nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node] | None) -> fx.Graph:
        """A graph of `nodes`, taking `inputs` as placeholders, returning `outputs` (None: the original output)."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in inputs:
            env[node] = graph.placeholder(f"crossing_{node.name}")
        for node in nodes:
            if node.op == "output" and outputs is not None:
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
        if outputs is not None:
            graph.output(tuple(env[n] for n in outputs))
        graph.lint()
        return graph

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.suffix(*self.prefix(images))
