"""Finding the weights a spec names: S3 downloads, SageMaker's `model.tar.gz`, and the
model folder or `.h5` file inside a folder."""

from __future__ import annotations

import os
import re
import tarfile
import tempfile
from typing import Any

from casting.model.weights.by_name import WeightsError

def _safe_extract(archive: str, dest: str) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            try:
                tar.extractall(dest, filter="data")
            except TypeError:  # pragma: no cover - Python without extraction filters
                tar.extractall(dest)
    except (tarfile.TarError, OSError) as exc:
        raise WeightsError(f"{archive}: cannot be extracted ({exc})") from exc


def _find_model_in(folder: str) -> str:
    """The shallowest model folder / weights file under `folder`."""
    candidates = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        depth = root[len(folder):].count(os.sep)
        if "model.weights.h5" in files:
            candidates.append((depth, 0, root))
        for name in sorted(files):
            if name.endswith(".h5") and name != "model.weights.h5":
                candidates.append((depth, 1, os.path.join(root, name)))
            elif name.endswith(".tar.gz") or name.endswith(".tgz"):
                candidates.append((depth, 2, os.path.join(root, name)))
    if not candidates:
        raise WeightsError(f"{folder}: holds no model.weights.h5, .h5 file or model.tar.gz")
    candidates.sort()
    return candidates[0][2]


def _parse_s3(uri: str) -> tuple[str, str]:
    m = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not m:
        raise WeightsError(f"{uri}: not an s3://bucket/key URI")
    return m.group(1), m.group(2)


def fetch_s3(uri: str, dest: str, client: Any = None) -> str:
    """Download an S3 file or every object under a prefix into `dest`; returns the local
    file (for a key) or folder (for a prefix)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _parse_s3(uri)
    s3 = client or boto3.client("s3")
    os.makedirs(dest, exist_ok=True)
    try:
        if key and not key.endswith("/"):
            try:
                s3.head_object(Bucket=bucket, Key=key)
                is_file = True
            except ClientError:
                is_file = False
            if is_file:
                local = os.path.join(dest, os.path.basename(key))
                s3.download_file(bucket, key, local)
                if local.endswith(".weights.h5"):
                    sibling = key.rsplit("/", 1)[0] + "/config.json" if "/" in key else "config.json"
                    try:
                        s3.download_file(bucket, sibling, os.path.join(dest, "config.json"))
                    except ClientError:
                        pass
                return local
        prefix = key if not key or key.endswith("/") else key + "/"
        paginator = s3.get_paginator("list_objects_v2")
        count = 0
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                if not (rel.endswith((".h5", ".json", ".tar.gz", ".tgz"))):
                    continue  # saved_model/, checkpoints' extras: not needed for weights
                local = os.path.join(dest, *rel.split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                s3.download_file(bucket, obj["Key"], local)
                count += 1
        if count == 0:
            raise WeightsError(f"{uri}: no such object and no weights files under that prefix")
        return dest
    except (ClientError, BotoCoreError) as exc:
        raise WeightsError(f"{uri}: cannot be downloaded ({exc})") from exc


def _resolve_local(path: str, scratch: str) -> str:
    """A folder or file we can load: tarballs extracted, folders searched."""
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file or folder")
    if os.path.isfile(path) and (path.endswith(".tar.gz") or path.endswith(".tgz")):
        out = tempfile.mkdtemp(prefix="extract-", dir=scratch)
        _safe_extract(path, out)
        return _resolve_local(_find_model_in(out), scratch)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model.weights.h5")):
        found = _find_model_in(path)
        return _resolve_local(found, scratch)
    return path
