"""What a checkpoint was trained on: the data (a fingerprint of its file list), the classes
and the architecture, so that a run never resumes another run's checkpoint by accident.

On SageMaker a restarted job finds its own checkpoints (the same channels, the same
files): it resumes. Locally, a checkpoint folder left by an earlier run on other data or
with other classes is refused before any training, with the two ways on."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from casting.errors import Explained

# Config fields that change the network's variables: a checkpoint saved with other values
# cannot be restored into this model.
ARCHITECTURE_FIELDS = (
    "class_names", "backbone", "fpn_channels", "rpn_anchor_ratios", "rpn_conv_channels",
    "pool_size", "mask_pool_size", "mask_shape", "fc_layers_size", "train_bn", "norm",
)
WAYS_ON = ("give a new --checkpoint-dir to start a new run there, or --resume False to start "
           "over here (the old checkpoints are moved into a superseded-* folder)")


class ResumeError(Explained, RuntimeError):
    """The checkpoint folder holds another run's checkpoints."""


def data_fingerprint(records: Any) -> dict[str, Any]:
    """Number of images and a SHA-256 of their sorted file names and sizes (not of the
    folder, which differs between machines and between synthetic runs)."""
    lines = []
    for record in records.records:
        path = record.image_path
        size = os.path.getsize(path) if os.path.exists(path) else -1
        lines.append(f"{os.path.basename(path)}:{size}")
    digest = hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()[:16]
    return {"images": len(lines), "files_sha256": digest}


def provenance(source: str, train: Any, validation: Any) -> dict[str, Any]:
    """What a run trains on, as its checkpoints record it (``state.extra["data"]``)."""
    return {"source": source, "class_names": list(train.class_names),
            "train": data_fingerprint(train), "validation": data_fingerprint(validation)}


def _text(data: dict[str, Any]) -> str:
    return (f"{data['train']['images']} training images from {data['source']} (files "
            f"{data['train']['files_sha256']})")


def check_resumable(path: str, saved_config: dict, saved_data: dict | None, config: Any,
                    data: dict[str, Any]) -> list[str]:
    """Raise :class:`ResumeError` when the checkpoint at ``path`` was trained on other data,
    other classes or another architecture. Returns the changed hyperparameters (a warning:
    a longer schedule or other step counts are a normal reason to resume)."""
    now = config.to_dict()
    # a field the checkpoint's config lacks (written before the field existed) had its default
    saved = {**type(config)().to_dict(), **saved_config}
    problems = []
    bad = [name for name in ARCHITECTURE_FIELDS
           if json.dumps(saved[name]) != json.dumps(now[name])]
    if bad:
        problems.append("another architecture or other classes: " + "; ".join(
            f"{name} {json.dumps(saved[name])} there, {json.dumps(now[name])} now"
            for name in bad))
    if saved_data and saved_data.get("train") != data.get("train"):
        problems.append(f"other training data: {_text(saved_data)} there, {_text(data)} now")
    if problems:
        raise ResumeError(f"the checkpoint {path} belongs to another run, trained on "
                          + "; and on ".join(problems) + ". Nothing was trained; "
                          + WAYS_ON + ".")
    return sorted(k for k in now if k in saved and json.dumps(saved[k]) != json.dumps(now[k]))


__all__ = ["ARCHITECTURE_FIELDS", "ResumeError", "data_fingerprint", "provenance",
           "check_resumable", "WAYS_ON"]
