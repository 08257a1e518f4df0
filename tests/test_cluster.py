"""Sweeps on multi-node clusters: a node removed mid-sweep (ray.cluster_utils.Cluster), and simulated
autoscaling with the fake_multinode provider (cluster/local-autoscaling.yaml) started from zero workers."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from repsub.store import RunWriter
from repsub.sweep import parse_config, run_sweep
from repsub.sweep.commit import ShardLedger
from tests.ray_cluster import RayHead, free_port
from tests.sweep_helpers import unit_rows

REPO = Path(__file__).resolve().parent.parent
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"


def test_a_node_removed_mid_sweep(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no shard
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    spare = None
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        config = parse_config({
            "model": "shallow_cnn", "out": str(tmp_path / "run"), "layers": ["conv3"], "units": "0-31",
            "optimization": {"steps": 20, "image_size": 24, "batch_size": 4},
            "sharding": {"units_per_shard": 4}, "workers": {"count": 2, "cpus": 1},
        })  # fmt: skip
        ledger = ShardLedger(RunWriter(config.out), config.fingerprint())
        removed = []

        def remove_a_node_once_work_is_under_way():
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len(ledger.done()) < 2:
                time.sleep(0.05)
            removed.append(len(ledger.done()))
            cluster.remove_node(nodes[0])  # its actor and in-flight shard are lost

        thread = threading.Thread(target=remove_a_node_once_work_is_under_way)
        thread.start()
        spare = cluster.add_node(num_cpus=1)  # room for the lost actor to restart
        run_sweep(config, progress=False)
        thread.join()
        assert removed and removed[0] < 16
        assert unit_rows(config.out) == sorted((m, "conv3", u) for m in ("am", "iam") for u in range(32))
    finally:
        ray.shutdown()
        cluster.shutdown()
        del spare


AUTOSCALING_DRIVER = """
import json, sys, threading, time
import ray
from repsub.sweep import parse_config, run_sweep

config = parse_config(json.loads(sys.argv[2]))
ray.init(address=sys.argv[1], logging_level="WARNING")
alive_counts, stop = [], threading.Event()

def watch():
    while not stop.is_set():
        alive_counts.append(sum(node["Alive"] for node in ray.nodes()))
        time.sleep(0.5)

watcher = threading.Thread(target=watch)
watcher.start()
run_sweep(config, progress=False)
finished = time.monotonic()
while time.monotonic() - finished < 90 and alive_counts[-1] > 1:  # idle nodes should go away
    time.sleep(1)
stop.set()
watcher.join()
print("RESULT " + json.dumps({"max_alive": max(alive_counts), "final_alive": alive_counts[-1],
                              "scale_down_s": round(time.monotonic() - finished, 1)}))
"""


def test_autoscaling_from_zero_workers_and_back(tmp_path):
    port = free_port()
    config_file = tmp_path / "autoscaling.yaml"
    autoscaling = yaml.safe_load((REPO / "cluster/local-autoscaling.yaml").read_text())
    autoscaling["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    config_file.write_text(yaml.safe_dump(autoscaling))
    head = RayHead(
        num_cpus=1,
        port=port,
        extra_args=("--num-gpus=0", f"--autoscaling-config={config_file}"),
        env={"RAY_FAKE_CLUSTER": "1", "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID},
    )
    try:
        sweep = {
            "model": "shallow_cnn", "out": str(tmp_path / "run"), "layers": ["conv2", "fc5"], "units": "0-11",
            "optimization": {"steps": 10, "image_size": 16, "batch_size": 4},
            "sharding": {"units_per_shard": 4}, "workers": {"count": 3, "gpus": 1, "cpus": 1},
        }  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-c", AUTOSCALING_DRIVER, head.address, json.dumps(sweep)],
            env=head.env,
            capture_output=True,
            text=True,
            timeout=400,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
        observed = json.loads(line.removeprefix("RESULT "))
        assert observed["max_alive"] > 2, observed  # the head and more than one added GPU node
        assert observed["final_alive"] == 1, observed  # idle GPU nodes were removed
        assert unit_rows(tmp_path / "run") == sorted(
            (m, layer, u) for m in ("am", "iam") for layer in ("conv2", "fc5") for u in range(12)
        )
    finally:
        head.stop()


@pytest.mark.parametrize(("name", "fill_defaults"), [("local-autoscaling.yaml", False), ("aws.yaml", True)])
def test_launcher_configs_pass_rays_schema(name, fill_defaults):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    # `ray up` first fills in the provider's defaults (the fake provider ships none: its file is complete).
    validate_config(prepare_config(config) if fill_defaults else config)


def test_launcher_config_is_consistent():
    config = yaml.safe_load((REPO / "cluster/aws.yaml").read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # no shard ever lands on the head
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["min_workers"] == 0 and t["resources"]["GPU"] >= 1 for t in workers.values())
    assert sum(t["max_workers"] for t in workers.values()) >= config["max_workers"]
    assert any(
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        for t in workers.values()
    )
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
    text = (REPO / "cluster/aws.yaml").read_text()
    assert "aws_secret_access_key" not in text.lower() and "AKIA" not in text
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert start.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in start
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_are_consistent(name):
    doc = yaml.safe_load((REPO / "cluster/kuberay" / name).read_text())
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert doc["apiVersion"] == "ray.io/v1" and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["num-gpus"] == "0"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"]
    containers = [head["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in spec["workerGroupSpecs"]
    ]
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert (
            env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        )
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("python -m jobs.sweep --config jobs/configs/")
        assert (REPO / doc["spec"]["entrypoint"].split("--config ")[1]).is_file()
