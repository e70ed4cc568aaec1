"""scripts/build_and_push.sh against moto's STS and ECR (a server on 127.0.0.1) with a fake
`docker` first on PATH that records its arguments."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer
from testkit import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build_and_push.sh"
ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-west-1"

# The AWS CLI comes from requirements-dev.txt (awscli) into the venv beside this Python;
# the script finds it there through run_script's PATH, whatever the machine has installed.
VENV_BIN = Path(sys.executable).parent


def test_the_aws_cli_is_installed_beside_python():
    found = shutil.which("aws", path=os.pathsep.join([str(VENV_BIN), os.environ["PATH"]]))
    assert found, "no `aws` on PATH or beside this Python: pip install -r requirements-dev.txt"


@pytest.fixture(scope="module")
def moto_url():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


FAKE_DOCKER = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    import json, os, sys
    call = {"argv": sys.argv[1:]}
    if "--password-stdin" in sys.argv:
        call["stdin"] = sys.stdin.read().strip()
    with open(os.environ["DOCKER_LOG"], "a") as fh:
        fh.write(json.dumps(call) + "\\n")
    fail_on = os.environ.get("DOCKER_FAIL_ON")
    sys.exit(1 if fail_on and sys.argv[1] == fail_on else 0)
    """
)


def run_script(tmp_path, moto_url, *args, **extra_env):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    docker = bindir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "docker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        PATH=os.pathsep.join([str(bindir), str(VENV_BIN), env["PATH"]]),
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        DOCKER_LOG=str(log),
    )
    env.update(extra_env)
    out = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                         timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return out, calls


def ecr(moto_url):
    return boto3.client("ecr", region_name=REGION, endpoint_url=moto_url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_creates_repo_logs_in_builds_tags_pushes(tmp_path, moto_url):
    out, calls = run_script(tmp_path, moto_url, "--region", REGION, "--repo", "casting-test",
                            "--tag", "v1")
    assert out.returncode == 0, out.stderr
    uri = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/casting-test"
    assert out.stdout.strip().splitlines()[-1] == f"{uri}:v1"
    repos = ecr(moto_url).describe_repositories(repositoryNames=["casting-test"])
    assert repos["repositories"][0]["repositoryUri"] == uri

    assert [c["argv"][0] for c in calls] == ["login", "build", "tag", "push"]
    login, build, tag, push = (c["argv"] for c in calls)
    assert login == ["login", "--username", "AWS", "--password-stdin",
                     f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"]
    # The password came from ECR through stdin: the token decodes to AWS:<password>.
    token = ecr(moto_url).get_authorization_token()["authorizationData"][0]["authorizationToken"]
    assert base64.b64decode(token).decode().startswith("AWS:")
    assert calls[0]["stdin"] and calls[0]["stdin"] not in " ".join(login)
    assert build == ["build", "--platform", "linux/amd64", "-t", "casting-test:v1",
                     "-f", str(ROOT / "Dockerfile"), str(ROOT)]
    assert tag == ["tag", "casting-test:v1", f"{uri}:v1"]
    assert push == ["push", f"{uri}:v1"]


def test_existing_repo_and_cpu_build(tmp_path, moto_url):
    ecr(moto_url).create_repository(repositoryName="already-there")
    out, calls = run_script(tmp_path, moto_url, "--repo", "already-there", "--cpu",
                            AWS_REGION=REGION)
    assert out.returncode == 0, out.stderr
    assert "creating ECR repository" not in out.stderr
    build = calls[1]["argv"]
    assert build[:5] == ["build", "--platform", "linux/amd64", "--build-arg",
                         "BASE_IMAGE=tensorflow/tensorflow:2.21.0"]
    assert "already-there:latest" in build
    assert calls[-1]["argv"][-1].endswith("/already-there:latest")


def test_fails_loudly_at_first_error(tmp_path, moto_url):
    out, calls = run_script(tmp_path, moto_url, "--region", REGION, "--repo", "failing",
                            DOCKER_FAIL_ON="build")
    assert out.returncode != 0
    assert [c["argv"][0] for c in calls] == ["login", "build"]  # no tag, no push

    other = tmp_path / "bad-name"
    other.mkdir()
    out, calls = run_script(other, moto_url, "--region", REGION, "--repo", "Bad_Name")
    assert out.returncode != 0 and "invalid repository name" in out.stderr and not calls


def test_needs_a_region(tmp_path, moto_url):
    out, calls = run_script(tmp_path, moto_url, "--repo", "r")
    assert out.returncode != 0 and "no region" in out.stderr and not calls
