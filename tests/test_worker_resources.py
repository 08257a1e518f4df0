"""workers.gpus / workers.cpus that no node can offer fail fast, saying what the cluster has (issue 13, item 10).
A real local Ray (2 CPUs, no GPU) and, for an autoscaler whose node types are not visible, the fake_multinode
provider with no GPU node type."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray.core.generated import autoscaler_pb2

from repsub.sweep import parse_config, run_sweep
from repsub.sweep.config import WorkersConfig
from repsub.sweep.resources import (
    AutoscalerView,
    ClusterResourceError,
    NodeType,
    actor_request,
    verdict,
    workers_fit_now,
)
from tests.ray_cluster import RayHead, free_port
from tests.sweep_helpers import start_local_ray

REPO = Path(__file__).resolve().parent.parent
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    start_local_ray(tmp_path_factory.mktemp("ray"))
    yield
    ray.shutdown()


def test_a_gpu_no_node_has_fails_within_seconds_saying_what_the_cluster_has(local_ray):
    started = time.monotonic()
    with pytest.raises(ClusterResourceError) as err:
        workers_fit_now(WorkersConfig(count=2, gpus=1, cpus=1))
    assert time.monotonic() - started < 20  # the monitor's first report, then at once
    message = str(err.value)
    assert "asks for {CPU: 1, GPU: 1}" in message and "1 x {CPU: 2, GPU: 0}" in message
    assert "no autoscaler" in message and "workers.gpus" in message
    with pytest.raises(ClusterResourceError, match=r"asks for \{CPU: 3, GPU: 0\}"):
        workers_fit_now(WorkersConfig(cpus=3))


@pytest.mark.parametrize("cpus", [0.5, 1, 2])
def test_what_a_node_offers_passes_at_once(local_ray, cpus):
    started = time.monotonic()
    assert workers_fit_now(WorkersConfig(count=4, cpus=cpus)) is True  # count: more actors wait their turn
    assert time.monotonic() - started < 2


def test_a_sweep_asking_for_a_gpu_fails_before_any_work_and_releases_its_lock(local_ray, tmp_path, capsys):
    config = parse_config({
        "model": "shallow_cnn", "out": str(tmp_path / "run"), "layers": ["fc6"], "units": "0-1",
        "optimization": {"steps": 2, "image_size": 16, "batch_size": 2}, "workers": {"count": 1, "gpus": 1},
    })  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ClusterResourceError, match="no autoscaler"):  # before any actor starts
        run_sweep(config, progress=False)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run" / "_lock.json").exists() and not (tmp_path / "run" / "units").exists()


def test_the_verdict_with_the_autoscalers_node_types():
    """As the GCS reports them (autoscaler v2, KubeRay): the proto Ray itself stores, parsed the same way."""
    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 4}, max_count=0),
            autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 1}, max_count=4),
        ]
    )
    types = AutoscalerView("types", tuple(
        NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, g.max_count) for g in config.node_group_configs
    ))  # fmt: skip
    head_only = [{"CPU": 4.0, "memory": 1e9, "node:10.0.0.1": 1.0}]
    assert (
        verdict(actor_request(WorkersConfig(gpus=1, cpus=6)), head_only, types) is None
    )  # gpu nodes can come
    message = verdict(actor_request(WorkersConfig(gpus=2, cpus=4)), head_only, types)
    assert "{CPU: 4, GPU: 2}" in message and "gpu {CPU: 8, GPU: 1} (up to 4)" in message
    assert "head" not in message.split("either:")[1]  # a type that can launch no node is not offered
    assert verdict({"CPU": 4}, head_only, AutoscalerView("none")) is None  # a live node fits
    assert verdict({"GPU": 1}, head_only, AutoscalerView("unknown")) == "wait"


AUTOSCALING_DRIVER = """
import json, sys, time
import ray
import ray.util.state
from repsub.sweep import ray_runner
from repsub.sweep.resources import ClusterResourceError, autoscaler_view
from repsub.sweep import parse_config

ray.init(address=sys.argv[1], logging_level="WARNING")
config = parse_config({"model": "shallow_cnn", "out": sys.argv[2], "workers": {"count": 1, "gpus": 1}})
started = time.monotonic()
try:
    ray_runner.start_workers(config, 10)
    result = {"error": None}
except ClusterResourceError as err:
    result = {"error": str(err)}
result["seconds"] = time.monotonic() - started
result["view"] = autoscaler_view().kind
time.sleep(1)
result["pending_actors"] = sum(a["state"] != "DEAD" for a in ray.util.state.list_actors(address=sys.argv[3]))
print("RESULT " + json.dumps(result))
"""


def test_an_autoscaler_that_cannot_add_a_fitting_node_fails_after_the_bounded_wait(tmp_path):
    port = free_port()
    autoscaling = yaml.safe_load((REPO / "cluster/local-autoscaling.yaml").read_text())
    autoscaling["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    autoscaling["available_node_types"]["ray.worker.gpu"]["resources"] = {"CPU": 1}  # no GPU node type
    config_file = tmp_path / "autoscaling.yaml"
    config_file.write_text(yaml.safe_dump(autoscaling))
    head = RayHead(
        num_cpus=1,
        port=port,
        extra_args=("--num-gpus=0", f"--autoscaling-config={config_file}"),
        env={"RAY_FAKE_CLUSTER": "1", "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID},
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", AUTOSCALING_DRIVER, head.address, str(tmp_path / "run"), head.dashboard],
            env={**head.env, "REPSUB_NODE_WAIT_S": "4"}, capture_output=True, text=True, timeout=180, cwd=REPO,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        observed = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))[7:])
    finally:
        head.stop()
    assert observed["view"] == "unknown"  # the v1 autoscaler does not show its node types
    assert "waiting up to 4 s for the autoscaler" in result.stdout
    message = observed["error"]
    assert message and "added no such node within 4 s" in message and "REPSUB_NODE_WAIT_S" in message
    assert "{CPU: 1, GPU: 1}" in message and "{CPU: 1, GPU: 0}" in message
    assert 4 <= observed["seconds"] < 40
    assert observed["pending_actors"] == 0  # the actors it started as demand were removed
