"""The Dockerfile's structure (dockerfile-parse), hadolint, and .dockerignore."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
GPU_BASE = "tensorflow/tensorflow:2.21.0-gpu"
CPU_BASE = "tensorflow/tensorflow:2.21.0"


@pytest.fixture(scope="module")
def parser():
    return DockerfileParser(path=str(DOCKERFILE))


def instructions(parser, name):
    return [i for i in parser.structure if i["instruction"] == name]


def copies(parser):
    """[(sources, destination, line)] for each COPY, flags dropped."""
    out = []
    for ins in instructions(parser, "COPY"):
        words = [w for w in shlex.split(ins["value"]) if not w.startswith("--")]
        out.append((words[:-1], words[-1], ins["startline"]))
    return out


def test_base_image_gpu_by_default_cpu_by_build_arg(parser):
    assert parser.baseimage == GPU_BASE
    cpu = DockerfileParser(path=str(DOCKERFILE), build_args={"BASE_IMAGE": CPU_BASE})
    assert cpu.baseimage == CPU_BASE
    assert len(instructions(parser, "FROM")) == 1


def test_environment(parser):
    envs = parser.envs
    assert envs["SAGEMAKER_PROGRAM"] == "train.py"
    assert envs["PYTHONUNBUFFERED"] == "1"
    assert "PATH" not in envs  # /usr/local/bin from the base image stays on PATH
    assert parser.labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"


def test_copy_targets_and_sources(parser):
    got = {dest: srcs for srcs, dest, _ in copies(parser)}
    assert got == {
        "/tmp/requirements.txt": ["requirements.txt"],
        "/usr/local/bin/": ["docker/train", "docker/serve"],
        "/opt/ml/code/casting/": ["casting/"],
        "/opt/ml/code/": ["train.py", "serve.py"],
    }
    # The toolkit pip-installs <code>/requirements.txt at job start: never copy one there.
    assert all(not d.startswith("/opt/ml/code") or "requirements.txt" not in " ".join(s)
               for s, d, _ in copies(parser))
    for srcs, _, _ in copies(parser):
        for src in srcs:
            if src not in ("train.py", "serve.py"):  # other engineers' files
                assert (ROOT / src).exists(), src


def test_train_and_serve_scripts_exist_for_the_build():
    missing = [n for n in ("train.py", "serve.py") if not (ROOT / n).is_file()]
    assert not missing, f"docker build needs {missing} (COPY train.py serve.py /opt/ml/code/)"


def test_launchers_resolvable_and_override_toolkit_train(parser):
    lines = [i["startline"] for i in parser.structure]
    pip_line = next(i["startline"] for i in instructions(parser, "RUN")
                    if "pip install" in i["value"])
    launcher_line = next(line for srcs, dest, line in copies(parser)
                         if dest == "/usr/local/bin/")
    # sagemaker-training installs its own /usr/local/bin/train: ours must come after.
    assert launcher_line > pip_line and lines
    for name in ("train", "serve"):
        src = ROOT / "docker" / name
        assert os.access(src, os.X_OK), f"{src} must be executable"
        assert src.read_text().startswith("#!/usr/bin/env python3\n")
        compile(src.read_text(), str(src), "exec")
    chmod = next(i["value"] for i in instructions(parser, "RUN")
                 if "chmod" in i["value"] and "/usr/local/bin/train" in i["value"])
    assert "command -v train" in chmod and "command -v serve" in chmod


def test_build_time_weights_and_toolchain(parser):
    runs = " ".join(i["value"] for i in instructions(parser, "RUN"))
    assert 'ResNet50(weights="imagenet", include_top=False)' in runs
    assert "/root/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in runs
    assert re.search(r"apt-get install -y --no-install-recommends gcc .*-dev", runs)
    assert "-r /tmp/requirements.txt" in runs


def test_no_credentials_in_any_layer(parser):
    secret = re.compile(r"AWS_ACCESS_KEY|AWS_SECRET|SESSION_TOKEN|PASSWORD|SECRET|TOKEN", re.I)
    for ins in parser.structure:
        if ins["instruction"] in ("ENV", "ARG", "LABEL"):
            assert not secret.search(ins["value"]), ins
    for srcs, _, _ in copies(parser):
        for src in srcs:
            assert not re.search(r"\.aws|\.env|credentials|\.pem", src), src


def run_hadolint(path):
    return subprocess.run([str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_clean():
    out = run_hadolint(DOCKERFILE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_config_really_checks(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n")
    out = run_hadolint(bad)
    assert out.returncode != 0
    assert "DL3007" in out.stdout and "DL3003" in out.stdout


# ---------------------------------------------------------------------------------------
# .dockerignore, with docker's rules: last matching pattern wins, '!' re-includes, a
# pattern that matches a parent folder matches everything below it.
# ---------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def load_dockerignore():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").lstrip("/"))
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def in_context(path: str, rules) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


def test_dockerignore_keeps_only_what_the_image_needs(parser):
    rules = load_dockerignore()
    for srcs, _, _ in copies(parser):
        for src in srcs:
            probe = src + "__init__.py" if src.endswith("/") else src
            assert in_context(probe, rules), src
    assert in_context("casting/model/heads.py", rules)
    for path in ("data/casting_512x512/def_front/cast_def_0_1.jpeg", "notebooks/1_prepare.ipynb",
                 "tests/test_dockerfile.py", ".venv/bin/python", ".git/config", "output/model/x.h5",
                 ".aws/credentials", "casting/__pycache__/launch.cpython-311.pyc",
                 "casting/.env", "runs/r1/ckpt.h5", "docs/container.md", "scripts/build_and_push.sh",
                 "requirements-dev.txt", "key.pem"):
        assert not in_context(path, rules), path
