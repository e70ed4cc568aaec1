"""Fixtures for the data-layer tests: handmade annotation files plus generated images."""

import json
import os
import shutil

import pytest

from datakit import write_image

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture
def sly_project(tmp_path):
    """Copy of fixtures/sly with an image of the annotated size beside every annotation."""
    root = tmp_path / "sly"
    shutil.copytree(os.path.join(FIXTURES, "sly"), root)
    images = {"ds1": "a.png", "ds1/datasets/child": "b.jpg"}
    for ds, name in images.items():
        ann_dir = root / ds / "ann"
        ann_file = [f for f in os.listdir(ann_dir) if f.endswith(".json")][0]
        size = json.loads((ann_dir / ann_file).read_text())["size"]
        write_image(str(root / ds / "img" / name), size["height"], size["width"])
    return root


@pytest.fixture
def coco_dir(tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(os.path.join(FIXTURES, "coco"), root)
    data = json.loads((root / "annotations.json").read_text())
    for img in data["images"]:
        write_image(str(root / "images" / img["file_name"]), img["height"], img["width"])
    return root
