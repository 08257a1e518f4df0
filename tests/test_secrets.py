"""Credentials in a location or an endpoint are refused and never echoed: not on stdout or stderr, not in an
exception, not in any file written (issue 13, security 1 and 2)."""

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from repsub.cli import main
from repsub.errors import RepsubError
from repsub.runstore.storage import configure_s3, describe_endpoint, explain_s3_error, scrub
from repsub.sweep import parse_config
from tests.ray_cluster import free_port

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3tV4lu3"  # a stand-in for a secret access key or session token
KEY_ID = "AKIAABCDEFGHIJKLMNOP"


def files_holding(root: Path, needle: str) -> list[Path]:
    """Every file under root whose name or content holds `needle`."""
    found = []
    for path in root.rglob("*"):
        if needle in str(path) or (path.is_file() and needle.encode() in path.read_bytes()):
            found.append(path)
    return found


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working directory and cache of its own, and no S3 endpoint from the machine's environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPSUB_CACHE", str(tmp_path / "cache"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    configure_s3()
    (tmp_path / "sweep.yaml").write_text(
        "model: shallow_cnn\nout: runs/local\nlayers: [fc6]\nunits: 0-1\n"
        "optimization: {steps: 2, image_size: 16, batch_size: 2}\n"
    )
    yield tmp_path
    configure_s3()
    assert files_holding(tmp_path, SECRET) == []  # nothing written anywhere holds the secret


SECRET_LOCATIONS = [
    f"s3://bucket/runs/x?secret_key={SECRET}",
    f"s3://{KEY_ID}:{SECRET}@bucket/runs/x",
    f"s3://bucket/runs/x#{SECRET}",
    f"s3://bucket/runs/x?X-Amz-Security-Token={SECRET}&region=us-east-1",
    f"s3://{KEY_ID}:wJal/rXU+{SECRET}@bucket/runs/x",  # a raw secret key holds '/' and '+'
]


@pytest.mark.parametrize("location", SECRET_LOCATIONS)
@pytest.mark.parametrize(
    "command",
    [
        ["summary", "{loc}"],
        ["report", "{loc}"],
        ["report", "{loc}", "--out", "report"],
        ["sweep", "--config", "sweep.yaml", "--out", "{loc}"],
        ["visualize", "--model", "shallow_cnn", "--method", "am", "--layers", "fc6", "--units", "0",
         "--steps", "1", "--image-size", "16", "--out", "{loc}"],
        ["selectivity", "--model", "shallow_cnn", "--data", "{loc}.beton", "--image-size", "16", "--out", "run"],
        ["selectivity", "--model", "shallow_cnn", "--data", "{loc}", "--image-size", "16", "--out", "run"],
    ],
    ids=["summary", "report", "report-out", "sweep-out", "visualize-out", "selectivity-beton", "selectivity-data"],
)  # fmt: skip
def test_the_cli_refuses_a_location_carrying_credentials_without_echoing_it(
    workspace, capfd, command, location
):
    argv = [part.replace("{loc}", location) for part in command]
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert SECRET not in out + err and KEY_ID not in out + err
    assert "must not embed credentials" in err and "s3://bucket/runs/x" in err  # says which location
    assert not (workspace / "run").exists() and not (workspace / "runs").exists()


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
@pytest.mark.parametrize(
    "endpoint",
    [
        f"http://{KEY_ID}:{SECRET}@127.0.0.1:9",
        f"http://127.0.0.1:9/?X-Amz-Credential={SECRET}",
        f"http://{KEY_ID}:ab/c+{SECRET}@127.0.0.1:9",
    ],
    ids=["userinfo", "query", "userinfo-with-slash"],
)
def test_an_endpoint_carrying_credentials_is_refused_without_echoing_it(
    workspace, capfd, monkeypatch, variable, endpoint
):
    monkeypatch.setenv(variable, endpoint)
    assert main(["summary", "s3://bucket/runs/x"]) == 2
    assert main(["sweep", "--config", "sweep.yaml", "--out", "s3://bucket/runs/x", "--no-progress"]) == 2
    out, err = capfd.readouterr()
    assert SECRET not in out + err and KEY_ID not in out + err
    assert err.count(f"the S3 endpoint from {variable} (http://127.0.0.1:9") == 2
    assert SECRET not in describe_endpoint()


@pytest.mark.parametrize(
    ("section", "value"),
    [
        ("out", f"s3://bucket/runs/x?secret_key={SECRET}"),
        ("selectivity", {"data": f"s3://{KEY_ID}:{SECRET}@bucket/data/val.beton"}),
        ("storage", {"endpoint_url": f"https://{KEY_ID}:{SECRET}@s3.example.org"}),
        ("storage", {"endpoint_url": f"https://s3.example.org?token={SECRET}"}),
    ],
)
def test_a_sweep_config_carrying_credentials_is_refused_when_read(workspace, capfd, section, value):
    raw = {"model": "shallow_cnn", "out": "runs/local", section: value}
    with pytest.raises(RepsubError) as err:
        parse_config(raw, source="sweep.yaml")
    message = str(err.value)
    assert SECRET not in message and KEY_ID not in message and "sweep.yaml" in message
    assert SECRET not in repr(err.value) and err.value.__cause__ is None  # no chained exception repeats it

    import yaml

    (workspace / "secret.yaml").write_text(yaml.safe_dump(raw))
    assert main(["sweep", "--config", "secret.yaml", "--no-progress"]) == 2
    out, error = capfd.readouterr()
    assert SECRET not in out + error and "must not embed credentials" in error
    (workspace / "secret.yaml").unlink()  # the user's own file holds it, not anything repsub wrote


def test_configure_s3_refuses_a_secret_endpoint():
    with pytest.raises(RepsubError, match="storage.endpoint_url") as err:
        configure_s3(f"http://user:{SECRET}@127.0.0.1:9")
    assert SECRET not in str(err.value)
    configure_s3()


def test_library_errors_are_scrubbed_of_url_credentials_and_key_ids(monkeypatch):
    # A real botocore error: it names the endpoint URL it could not reach, user info included.
    port = free_port()  # nothing listens there
    client = boto3.client(
        "s3", endpoint_url=f"http://{KEY_ID}:{SECRET}@127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )  # fmt: skip
    with pytest.raises(EndpointConnectionError) as raised:
        client.head_bucket(Bucket="bucket")
    assert SECRET in str(raised.value)  # the library does echo it: what scrub is for
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    message = str(explain_s3_error(raised.value, "s3://bucket/runs/x"))
    assert SECRET not in message and KEY_ID not in message
    assert f"http://127.0.0.1:{port}" in message and "cannot be reached" in message

    text = (
        f"GET https://bucket.s3.amazonaws.com/k?X-Amz-Credential={KEY_ID}%2F20260101&X-Amz-Signature={SECRET} "
        f"failed; proxy http://u:{SECRET}@proxy:3128 refused; key {KEY_ID}; http://k:a/b+{SECRET}@host:1/x"
    )
    cleaned = scrub(text)
    assert SECRET not in cleaned and KEY_ID not in cleaned
    assert "https://bucket.s3.amazonaws.com/k failed" in cleaned and "http://proxy:3128 refused" in cleaned
    assert cleaned.endswith("http://host:1/x")


def test_real_processes_refuse_and_print_nothing_secret(workspace):
    """`repsub sweep` and `python -m jobs.sweep` as the user runs them (separate processes)."""
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{KEY_ID}:{SECRET}@127.0.0.1:9"}
    runs = [
        [sys.executable, "-m", "repsub.cli", "sweep", "--config", "sweep.yaml", "--out", "s3://bucket/runs/x"],
        [sys.executable, "-m", "jobs.sweep", "--config", "sweep.yaml", "--out",
         f"s3://bucket/runs/x?secret_key={SECRET}"],
    ]  # fmt: skip
    for argv in runs:
        result = subprocess.run(
            argv, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert SECRET not in result.stdout + result.stderr and KEY_ID not in result.stdout + result.stderr
        assert "must not embed credentials" in result.stderr


def test_a_port_number_holding_403_is_not_read_as_access_denied(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:40399")
    text = 'Could not connect to the endpoint URL: "http://127.0.0.1:40399/bucket"'
    assert "cannot be reached" in str(explain_s3_error(Exception(text), "s3://bucket/x"))
    assert "access denied" in str(
        explain_s3_error(Exception("An error occurred (403) when calling"), "s3://b/x")
    )
