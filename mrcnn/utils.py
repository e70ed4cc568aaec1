"""matterport's `utils`: the `Dataset` base class and the box/mask/AP helpers.

Boxes are (y1, x1, y2, x2) with y2/x2 exclusive, masks are [H, W, N] (instances last), as in
matterport.
"""

from __future__ import annotations

import logging
import urllib.request

import numpy as np

from mrcnn._boxes import (  # matterport's names, kept in mrcnn/_boxes.py
    batch_slice, box_refinement_graph, denorm_boxes, expand_mask, generate_anchors,
    generate_pyramid_anchors, minimize_mask, mold_mask, norm_boxes, resize, unmold_mask,
)
from mrcnn._ap import (  # matching and AP, kept in mrcnn/_ap.py
    compute_ap, compute_ap_range, compute_iou, compute_matches, compute_overlaps,
    compute_overlaps_masks, compute_recall, trim_zeros,
)

__all__ = [
    "COCO_MODEL_URL", "Dataset", "extract_bboxes", "compute_iou", "compute_overlaps",
    "compute_overlaps_masks", "non_max_suppression", "box_refinement", "apply_box_deltas",
    "trim_zeros", "compute_matches", "compute_ap", "compute_ap_range", "compute_recall",
    "resize_image", "resize_mask", "download_trained_weights", "batch_slice",
    "box_refinement_graph", "denorm_boxes", "expand_mask", "generate_anchors",
    "generate_pyramid_anchors", "minimize_mask", "mold_mask", "norm_boxes", "resize",
    "unmold_mask",
]

COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"


# ------------------------------------------------------------------------------------------
# Boxes and masks
# ------------------------------------------------------------------------------------------
def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """Boxes [N, (y1, x1, y2, x2)] int32 around each mask of `mask` [H, W, N]; y2, x2 are one
    past the last row/column. An empty mask gives a zero box."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[:, :, None]
    boxes = np.zeros([mask.shape[-1], 4], dtype=np.int32)
    for i in range(mask.shape[-1]):
        m = mask[:, :, i]
        rows = np.where(np.any(m, axis=1))[0]
        cols = np.where(np.any(m, axis=0))[0]
        if rows.size:
            boxes[i] = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    return boxes


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape[0] == 0:
        return np.zeros([0], dtype=np.int32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        iou = compute_iou(boxes[i], boxes[order[1:]], area[i], area[order[1:]])
        order = order[1:][iou <= threshold]
    return np.array(keep, dtype=np.int32)


def box_refinement(box: np.ndarray, gt_box: np.ndarray) -> np.ndarray:
    """Deltas (dy, dx, log(dh), log(dw)) from `box` to `gt_box`."""
    box = np.asarray(box, dtype=np.float32)
    gt_box = np.asarray(gt_box, dtype=np.float32)
    h = box[:, 2] - box[:, 0]
    w = box[:, 3] - box[:, 1]
    cy = box[:, 0] + 0.5 * h
    cx = box[:, 1] + 0.5 * w
    gh = gt_box[:, 2] - gt_box[:, 0]
    gw = gt_box[:, 3] - gt_box[:, 1]
    gcy = gt_box[:, 0] + 0.5 * gh
    gcx = gt_box[:, 1] + 0.5 * gw
    return np.stack([(gcy - cy) / h, (gcx - cx) / w, np.log(gh / h), np.log(gw / w)], axis=1)


def apply_box_deltas(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    deltas = np.asarray(deltas, dtype=np.float32)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    cy = boxes[:, 0] + 0.5 * h + deltas[:, 0] * h
    cx = boxes[:, 1] + 0.5 * w + deltas[:, 1] * w
    h = h * np.exp(deltas[:, 2])
    w = w * np.exp(deltas[:, 3])
    return np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=1)


# ------------------------------------------------------------------------------------------
# Resizing (the same geometry the model's input pipeline uses)
# ------------------------------------------------------------------------------------------
def _resize_array(array: np.ndarray, height: int, width: int, order: int) -> np.ndarray:
    from PIL import Image

    resample = Image.NEAREST if order == 0 else Image.BILINEAR
    if array.ndim == 2:
        return np.asarray(Image.fromarray(array).resize((width, height), resample))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(array[:, :, c])).resize((width, height), resample))
        for c in range(array.shape[2])
    ]
    return np.stack(channels, axis=2) if channels else np.zeros((height, width, 0), array.dtype)


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square"):
    """Resize keeping the aspect ratio so the long side is `max_dim`, zero-padded at the
    bottom/right to a `max_dim` square (the model's input geometry; matterport centres the
    padding, the model and this function put it bottom/right).

    Returns (image, window (y1, x1, y2, x2), scale, padding, crop) like matterport."""
    image = np.asarray(image)
    dtype = image.dtype
    h, w = image.shape[:2]
    if mode == "none" or max_dim is None:
        return image, (0, 0, h, w), 1.0, [(0, 0), (0, 0), (0, 0)], None
    scale = max_dim / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if image.ndim == 2:
        image = image[:, :, None]
    work = image.astype(np.float32)
    resized = np.stack(
        [_resize_array(work[:, :, c], nh, nw, order=1) for c in range(work.shape[2])], axis=2
    )
    out = np.zeros((max_dim, max_dim, image.shape[2]), dtype=np.float32)
    out[:nh, :nw] = resized
    if np.issubdtype(dtype, np.integer):
        out = np.clip(np.round(out), np.iinfo(dtype).min, np.iinfo(dtype).max)
    out = out.astype(dtype)
    padding = [(0, max_dim - nh), (0, max_dim - nw), (0, 0)]
    return out, (0, 0, nh, nw), scale, padding, None


def resize_mask(mask, scale, padding, crop=None):
    """Resize [H, W, N] masks by `scale` (nearest) and pad like `resize_image`."""
    mask = np.asarray(mask)
    h, w = mask.shape[:2]
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    n = mask.shape[2] if mask.ndim == 3 else 0
    m = mask.reshape(h, w, -1).astype(np.uint8)
    resized = (
        np.stack([_resize_array(m[:, :, i], nh, nw, order=0) for i in range(n)], axis=2)
        if n else np.zeros((nh, nw, 0), np.uint8)
    )
    pad = [(p[0], p[1]) for p in padding[:2]] + [(0, 0)]
    out = np.pad(resized, pad)
    return out.astype(mask.dtype) if mask.dtype != bool else out.astype(bool)


# ------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------
class Dataset:
    """matterport's dataset base class. Subclass it, call `add_class` / `add_image` while
    loading, override `load_mask` (and `load_image` / `image_reference` if needed), then
    call `prepare()`.

        class ShapesDataset(utils.Dataset):
            def load_shapes(self, count, height, width):
                self.add_class("shapes", 1, "square")
                for i in range(count):
                    self.add_image("shapes", image_id=i, path=None, width=width, height=height)
            def load_mask(self, image_id):
                ...
                return masks, class_ids   # [H, W, N] bool, [N] int32
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}

    def add_class(self, source, class_id, class_name):
        assert "." not in source, "Source name cannot contain a dot"
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return  # already added
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id):
        """A link or description of the image (override for your dataset)."""
        return ""

    def prepare(self, class_map=None):
        """Build the id tables; call after adding all classes and images."""

        def clean_name(name):
            return ",".join(name.split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)
        self.class_from_source_map = {
            f"{info['source']}.{info['id']}": cid
            for info, cid in zip(self.class_info, self.class_ids)
        }
        self.image_from_source_map = {
            f"{info['source']}.{info['id']}": iid
            for info, iid in zip(self.image_info, self.image_ids)
        }
        self.sources = list(dict.fromkeys(i["source"] for i in self.class_info))
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info) if i == 0 or source == info["source"]
            ]

    def map_source_class_id(self, source_class_id):
        """'coco.12' -> the internal class id."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        info = self.class_info[class_id]
        assert info["source"] == source
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        return self.image_info[image_id]["path"]

    def load_image(self, image_id):
        """The image as an [H, W, 3] uint8 RGB array (grey is expanded, alpha dropped)."""
        from PIL import Image

        path = self.image_info[image_id]["path"]
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L", "RGBA") else im)
        except (OSError, TypeError, AttributeError) as exc:
            raise OSError(f"image {image_id} ({path!r}) cannot be read: {exc}") from exc
        if image.ndim != 3:
            image = np.stack([image] * 3, axis=-1)
        if image.shape[-1] == 4:
            image = image[..., :3]
        return image

    def load_mask(self, image_id):
        """Override: return (masks [H, W, N] bool, class_ids [N] int32). The base class has no
        annotations and returns an empty mask."""
        logging.warning(
            "You are using the default load_mask(), maybe you need to define your own one."
        )
        return np.empty([0, 0, 0]), np.empty([0], np.int32)


def download_trained_weights(coco_model_path, verbose=1):
    """Download matterport's COCO weights (`mask_rcnn_coco.h5`) to `coco_model_path`."""
    if verbose > 0:
        print(f"Downloading pretrained model to {coco_model_path} ...")
    from casting.files import atomic_path

    try:
        with atomic_path(coco_model_path, suffix=".part") as tmp:
            with urllib.request.urlopen(COCO_MODEL_URL) as resp, open(tmp, "wb") as out:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
    except OSError as exc:
        raise OSError(
            f"could not download {COCO_MODEL_URL} ({exc}); download it elsewhere and copy it "
            f"to {coco_model_path}"
        ) from exc
    if verbose > 0:
        print("... done downloading pretrained model!")


