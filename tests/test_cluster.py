"""Sweeps on multi-node clusters: a node removed mid-sweep (ray.cluster_utils.Cluster), and simulated
autoscaling with the fake_multinode provider (cluster/local-autoscaling.yaml) started from zero workers."""

import json
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from repsub.runstore.writer import RunWriter
from repsub.sweep import parse_config, run_sweep
from repsub.sweep.commit import ShardLedger
from tests.ray_cluster import RayHead, free_port
from tests.sweep_helpers import unit_rows, wait_for_shards

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
            removed.append(wait_for_shards(ledger, 2, timeout=90))
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
    for name, node_type in types.items():
        node = node_type["node_config"]
        assert node["MetadataOptions"]["HttpTokens"] == "required", name  # IMDSv2 only
        assert node["MetadataOptions"]["HttpPutResponseHopLimit"] == 1, name
        volumes = node["BlockDeviceMappings"]
        assert volumes and all(v["Ebs"]["Encrypted"] is True for v in volumes), name
        # The user's own group on every node type: the launcher then creates none (its own opens SSH to all).
        assert node["SecurityGroupIds"] == ["sg-REPLACE-WITH-YOUR-GROUP"], name
    assert "security_group" not in config["provider"] and "0.0.0.0/0" not in yaml.safe_dump(config)


def test_the_launcher_uses_only_the_users_group_and_ssh_from_the_users_network(monkeypatch, capfd):
    """Ray's own AWS bootstrap steps (subnets, security groups) against an EC2 API (moto server)."""
    import copy

    from ray.autoscaler._private.aws import config as aws_bootstrap
    from ray.autoscaler._private.util import prepare_config

    from infra.cluster_security_group import SecurityGroupError, ensure_cluster_security_group
    from infra.iam_s3_server import SETUP_KEYS, EnforcingS3

    server = EnforcingS3()  # moto; not enforcing: EC2 with any keys
    try:
        for key, value in server.env(SETUP_KEYS).items():
            monkeypatch.setenv(key, value)
        ec2 = server.client("ec2")
        vpc = next(v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v["IsDefault"])
        text = (REPO / "cluster/aws.yaml").read_text()
        with pytest.raises(AssertionError):  # the placeholder: `ray up` stops before launching anything
            aws_bootstrap._configure_subnet(prepare_config(yaml.safe_load(text)))
        assert "Failed to detect a security group" in capfd.readouterr().err
        for everywhere in ("0.0.0.0/0", "::/0", "0.0.0.0/00"):
            with pytest.raises(SecurityGroupError, match="every address"):
                ensure_cluster_security_group(ec2, vpc, everywhere)
        with pytest.raises(SecurityGroupError, match="not an IPv4/IPv6 network"):
            ensure_cluster_security_group(ec2, vpc, "my-laptop")
        group = ensure_cluster_security_group(ec2, vpc, "203.0.113.7/32")
        assert ensure_cluster_security_group(ec2, vpc, "203.0.113.7/32") == group  # idempotent
        groups_before = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}

        config = prepare_config(yaml.safe_load(text.replace("sg-REPLACE-WITH-YOUR-GROUP", group)))
        config = aws_bootstrap._configure_security_group(
            aws_bootstrap._configure_subnet(copy.deepcopy(config))
        )
        assert {t["node_config"]["SecurityGroupIds"][0] for t in config["available_node_types"].values()} == {
            group
        }
        groups = ec2.describe_security_groups()["SecurityGroups"]
        assert {g["GroupId"] for g in groups} == groups_before  # the launcher created no group of its own
        [ours] = [g for g in groups if g["GroupId"] == group]
        ssh = [p for p in ours["IpPermissions"] if p.get("FromPort") == 22]
        assert [r["CidrIp"] for p in ssh for r in p["IpRanges"]] == ["203.0.113.7/32"]
        others = [p for p in ours["IpPermissions"] if p.get("FromPort") != 22]
        assert [pair["GroupId"] for p in others for pair in p["UserIdGroupPairs"]] == [group]  # intra-cluster
        assert all(not p.get("IpRanges") for p in others)

        ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            ],
        )
        with pytest.raises(SecurityGroupError, match="admits traffic from everywhere"):
            ensure_cluster_security_group(ec2, vpc, "203.0.113.7/32")
    finally:
        server.close()


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

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    templates = pod_templates(doc)
    assert [t["metadata"]["labels"]["repsub/role"] for t in templates][:2] == ["head", "worker"]
    for template in templates:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            image, _, tag = container["image"].rpartition(":")
            assert "/" not in tag and tag == f"{version}-ray{spec['rayVersion']}", container[
                "image"
            ]  # pinned
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
    assert spec["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False

    # The data the shipped ImageNet config reads is mounted, read-only, in the head (the driver counts its
    # images) and in every worker.
    data = yaml.safe_load((REPO / "jobs/configs/vgg16_imagenet.yaml").read_text())["selectivity"]["data"]
    claim = yaml.safe_load((REPO / "cluster/kuberay/data-pvc.yaml").read_text())["metadata"]["name"]
    for template in templates[:2] if doc["kind"] == "RayJob" else templates:
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = [m for m in pod["containers"][0]["volumeMounts"] if data.startswith(m["mountPath"] + "/")]
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True
        assert volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"] == claim


def pod_templates(doc: dict) -> list[dict]:
    """Head, worker group(s), and a RayJob's submitter: every pod template of a KubeRay manifest."""
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return templates + ([doc["spec"]["submitterPodTemplate"]] if doc["kind"] == "RayJob" else [])


def test_kubernetes_objects_pass_the_kubernetes_schemas():
    """Strict validation (unknown fields refused) against the Kubernetes 1.30 OpenAPI schemas: the NetworkPolicies,
    the claim, and every pod template of the KubeRay manifests (as a PodTemplate: RayCluster is a CRD)."""
    import kubernetes_validate

    documents = [
        *yaml.safe_load_all((REPO / "cluster/kuberay/networkpolicy.yaml").read_text()),
        yaml.safe_load((REPO / "cluster/kuberay/data-pvc.yaml").read_text()),
    ]
    for name in ("raycluster.yaml", "rayjob.yaml"):
        for i, template in enumerate(
            pod_templates(yaml.safe_load((REPO / "cluster/kuberay" / name).read_text()))
        ):
            documents.append(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"t{i}"},
                    "template": template,
                }
            )
    for document in documents:
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In) applied to a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def reachable(policies: list[dict], target: dict, source: dict, port: int) -> bool:
    """NetworkPolicy ingress semantics for pods in one namespace: a pod no policy selects accepts anything;
    otherwise some rule of a policy selecting it must admit the source's labels on the port."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None or any(_selects(peer.get("podSelector", {}), source) for peer in peers):
                return True
    return False


def test_network_policies_limit_who_reaches_the_head():
    policies = list(yaml.safe_load_all((REPO / "cluster/kuberay/networkpolicy.yaml").read_text()))
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
    assert not [
        peer for p in policies for r in p["spec"]["ingress"] for peer in r["from"] if "ipBlock" in peer
    ]
    pods = {role: {"app.kubernetes.io/name": "repsub", "repsub/role": role} for role in ("head", "worker",
            "submitter")}  # fmt: skip
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    stranger = {"app": "web"}
    head, worker = pods["head"], pods["worker"]
    for port in (8265, 6379, 10001):
        assert reachable(policies, head, worker, port) and reachable(policies, worker, head, port)
        assert not reachable(policies, head, stranger, port) and not reachable(
            policies, worker, stranger, port
        )
    for source in (pods["submitter"], operator):
        assert reachable(policies, head, source, 8265)  # the job API, and nothing else
        assert not reachable(policies, head, source, 6379) and not reachable(policies, worker, source, 8265)
    # The labels the policies select on are those the manifests give their pods.
    for name in ("raycluster.yaml", "rayjob.yaml"):
        for template in pod_templates(yaml.safe_load((REPO / "cluster/kuberay" / name).read_text())):
            assert template["metadata"]["labels"] == pods[template["metadata"]["labels"]["repsub/role"]]
