"""Can the cluster host one worker actor? Checked when the sweep starts its actors: a request no node can
satisfy would otherwise leave them pending forever.

An actor asks for `workers.cpus` CPUs and `workers.gpus` GPUs. It fits when a live node offers that much
(its total, not what is free now: busy nodes free up). Otherwise it depends on the autoscaler:
- one that reports its node types to the GCS (autoscaler v2, KubeRay): fits when a node type that may
  still be launched offers enough; if none does, fail at once, listing the node types;
- none at all (a fixed cluster, a local Ray: Ray's monitor then runs a read-only provider): fail at once;
- one whose node types are not visible (the v1 autoscaler of `ray up` and fake_multinode): start the
  actors (their pending demand is what makes it grow) and wait up to REPSUB_NODE_WAIT_S seconds (default
  600) for a fitting node, then remove them and fail.
Every failure says what was asked and what the cluster has.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from repsub.errors import RepsubError
from repsub.sweep.config import WorkersConfig

NODE_WAIT_ENV = "REPSUB_NODE_WAIT_S"
DEFAULT_NODE_WAIT_S = 600.0
_HIDDEN = ("memory", "object_store_memory")  # every node has them; the actor asks for none


class ClusterResourceError(RepsubError):
    """No node of the cluster, nor any the autoscaler can add, offers what one worker actor asks for."""


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int  # -1: unbounded


@dataclass(frozen=True)
class AutoscalerView:
    """What the cluster says about growing: node types (known), none (cannot grow), or an autoscaler that
    does not say (unknown)."""

    kind: str  # "types" | "none" | "unknown"
    node_types: tuple[NodeType, ...] = ()


def actor_request(workers: WorkersConfig) -> dict[str, float]:
    return {name: amount for name, amount in (("CPU", workers.cpus), ("GPU", workers.gpus)) if amount > 0}


def fits(request: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0) >= amount for name, amount in request.items())


def describe(resources: dict[str, float]) -> str:
    shown = {
        k: v for k, v in resources.items() if k not in _HIDDEN and not k.startswith(("node:", "accelerator"))
    }
    shown.setdefault("GPU", 0)
    order = sorted(shown, key=lambda k: (k not in ("CPU", "GPU"), k))
    return "{" + ", ".join(f"{k}: {shown[k]:g}" for k in order) + "}"


def describe_nodes(nodes: list[dict[str, float]]) -> str:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[describe(node)] = counts.get(describe(node), 0) + 1
    return ", ".join(f"{n} x {text}" for text, n in counts.items()) or "no live node"


def verdict(request: dict[str, float], nodes: list[dict[str, float]], view: AutoscalerView) -> str | None:
    """None: an actor fits (now or once the autoscaler adds a node); "wait": an autoscaler might add one;
    otherwise the error message."""
    if fits(request, {}) or any(fits(request, node) for node in nodes):
        return None
    asked = f"each worker actor asks for {describe(request)} (workers.cpus, workers.gpus)"
    has = f"the cluster's live nodes offer {describe_nodes(nodes)}"
    if view.kind == "types":
        launchable = [t for t in view.node_types if t.max_count != 0]
        if any(fits(request, t.resources) for t in launchable):
            return None
        types = ", ".join(
            f"{t.name} {describe(t.resources)} (up to {'any' if t.max_count < 0 else t.max_count})"
            for t in launchable
        )
        return (
            f"{asked}, but {has} and no node type of its autoscaler offers that either: {types or 'none'}. "
            "Lower workers.gpus / workers.cpus, or add such a node type"
        )
    if view.kind == "none":
        return (
            f"{asked}, but {has}, and this cluster has no autoscaler to add nodes. Lower workers.gpus / "
            "workers.cpus to what a node offers, or run on a cluster that has such nodes"
        )
    return "wait"


def autoscaler_view() -> AutoscalerView | None:
    """The autoscaler's node types, if the GCS has them; whether one can add nodes at all; None while Ray's
    monitor has not reported yet (a few seconds after the cluster starts)."""
    import ray._private.state
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return AutoscalerView("types", tuple(
            NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, g.max_count)
            for g in config.node_group_configs
        ))  # fmt: skip
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not status:
        return None
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    if not mapping:
        return None  # a first report, before the monitor has seen the nodes
    readonly = all(kind == format_readonly_node_type(node) for node, kind in mapping.items())
    return AutoscalerView("none" if readonly else "unknown")


def live_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def workers_fit_now(workers: WorkersConfig, status_wait_s: float = 15.0, poll_s: float = 0.5) -> bool:
    """True: a worker actor fits (a live node, or a node type the autoscaler may launch, offers enough).
    False: only an autoscaler that does not show its node types could help: start the actors (their demand
    is what makes it grow) and `wait_for_fitting_node`. Raises ClusterResourceError when nothing can help."""
    request = actor_request(workers)
    deadline = time.monotonic() + status_wait_s
    while True:
        nodes = live_nodes()
        if any(fits(request, node) for node in nodes):
            return True
        view = autoscaler_view()
        if view is not None or time.monotonic() > deadline:
            break
        time.sleep(poll_s)  # Ray's monitor reports a few seconds after the cluster starts
    answer = verdict(request, nodes, view or AutoscalerView("unknown"))
    if answer not in (None, "wait"):
        raise ClusterResourceError(answer)
    return answer is None


def wait_for_fitting_node(workers: WorkersConfig, wait_s: float | None = None, poll_s: float = 1.0) -> None:
    """Wait until a live node offers what a worker actor asks for; ClusterResourceError after `wait_s`
    (default: $REPSUB_NODE_WAIT_S, else 600)."""
    if wait_s is None:
        wait_s = float(os.environ.get(NODE_WAIT_ENV, DEFAULT_NODE_WAIT_S))
    request = actor_request(workers)
    nodes = live_nodes()
    if any(fits(request, node) for node in nodes):
        return
    print(
        f"waiting up to {wait_s:g} s for the autoscaler to add a node offering {describe(request)} "
        f"(live nodes: {describe_nodes(nodes)})"
    )
    deadline = time.monotonic() + wait_s
    while not any(fits(request, node) for node in nodes):
        if time.monotonic() > deadline:
            raise ClusterResourceError(
                f"each worker actor asks for {describe(request)} (workers.cpus, workers.gpus), but the "
                f"cluster's live nodes offer {describe_nodes(nodes)}, and its autoscaler added no such node "
                f"within {wait_s:g} s ({NODE_WAIT_ENV} sets how long to wait; `ray status` shows its node types)"
            )
        time.sleep(poll_s)
        nodes = live_nodes()
