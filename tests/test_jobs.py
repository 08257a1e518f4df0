"""`ray job submit` of the demo config to a real Ray head started with `ray start --head`."""

import json
import sys
from pathlib import Path

import pytest

import repsub
from tests.ray_cluster import RayHead

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def head():
    cluster = RayHead(num_cpus=2)
    yield cluster
    cluster.stop()


def test_submit_the_demo_config_as_a_ray_job(head, tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    config = tmp_path / "demo.yaml"  # the shipped demo config with this test's data and output locations
    config.write_text(
        (REPO / "jobs/configs/demo.yaml")
        .read_text()
        .replace("data: demo,", f"data: {data},")  # --prepare-demo-data writes the demo's images there
        .replace("runs/demo-sweep", str(out))
    )
    result = head.run(
        "job",
        "submit",
        "--address",
        head.dashboard,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"env_vars": {"REPSUB_CACHE": str(tmp_path / "cache")}}),  # not the user's cache
        "--",
        sys.executable,
        "-m",
        "jobs.sweep",
        "--config",
        str(config),
        "--prepare-demo-data",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout and "sweep written to" in result.stdout
    run = repsub.open_run(out)
    units = run.units.to_table(columns=["layer", "method", "unit"])
    assert units.num_rows == 2 * (16 * 5 + 10)  # units 0-15 of each layer (fc6 has 10), am and iam
    assert sorted(set(units["layer"].to_pylist())) == ["conv1", "conv2", "conv3", "conv4", "fc5", "fc6"]
    assert run.selectivity.count_rows() == 64 + 64 + 128 + 128 + 128 + 10
    assert run.manifest["commands"]["sweep"]["config"]["model"] == "shallow_cnn"
    assert len(list(data.rglob("*.png"))) == 300 and not list(tmp_path.glob(".data.tmp-*"))


def test_the_job_api_refuses_a_caller_without_the_token(head):
    result = head.run("job", "list", "--address", head.dashboard, env={"RAY_AUTH_TOKEN": "wrong-token"})
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "token authentication is enabled" in last_line.lower(), last_line
