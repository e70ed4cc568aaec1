"""matterport's overlap and AP helpers, re-exported by `mrcnn.utils`: box and mask IoU,
greedy matching by mask IoU, VOC-style average precision, as matterport's notebooks and
samples call them. The product's COCO figures come from casting.evaluation (pycocotools),
not from these."""

from __future__ import annotations

import numpy as np


def compute_iou(box: np.ndarray, boxes: np.ndarray, box_area: float, boxes_area: np.ndarray) -> np.ndarray:
    """IoU of one box with each of `boxes` (areas given)."""
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = box_area + boxes_area - inter
    return inter / np.maximum(union, 1e-9)


def compute_overlaps(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU matrix [len(boxes1), len(boxes2)]."""
    boxes1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    boxes2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    out = np.zeros((boxes1.shape[0], boxes2.shape[0]))
    for j in range(boxes2.shape[0]):
        out[:, j] = compute_iou(boxes2[j], boxes1, area2[j], area1)
    return out


def compute_overlaps_masks(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """IoU matrix between two sets of [H, W, N] masks."""
    masks1 = np.asarray(masks1)
    masks2 = np.asarray(masks2)
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]))
    m1 = np.reshape(masks1 > 0.5, (-1, masks1.shape[-1])).astype(np.float32)
    m2 = np.reshape(masks2 > 0.5, (-1, masks2.shape[-1])).astype(np.float32)
    area1 = m1.sum(axis=0)
    area2 = m2.sum(axis=0)
    inter = m1.T @ m2
    union = area1[:, None] + area2[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def trim_zeros(x: np.ndarray) -> np.ndarray:
    """Drop the rows that are all zero (padding)."""
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        return x
    return x[~np.all(x == 0, axis=1)]


def compute_matches(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
                    pred_masks, iou_threshold=0.5, score_threshold=0.0):
    """Greedy matching by mask IoU, highest score first, same class only.
    Returns (gt_match [G], pred_match [P], overlaps [P, G]); -1 marks no match.
    `score_threshold`, as in matterport, bounds the overlaps considered (not the scores)."""
    iou_threshold = max(iou_threshold, score_threshold)
    gt_boxes = trim_zeros(np.asarray(gt_boxes))
    gt_masks = np.asarray(gt_masks)[..., : gt_boxes.shape[0]]
    pred_boxes = trim_zeros(np.asarray(pred_boxes))
    pred_scores = np.asarray(pred_scores)[: pred_boxes.shape[0]]
    order = np.argsort(pred_scores)[::-1]
    pred_boxes = pred_boxes[order]
    pred_class_ids = np.asarray(pred_class_ids)[order]
    pred_scores = pred_scores[order]
    pred_masks = np.asarray(pred_masks)[..., order]
    overlaps = compute_overlaps_masks(pred_masks, gt_masks)
    pred_match = -1 * np.ones([pred_boxes.shape[0]])
    gt_match = -1 * np.ones([gt_boxes.shape[0]])
    gt_class_ids = np.asarray(gt_class_ids)
    for i in range(len(pred_boxes)):
        for j in np.argsort(overlaps[i])[::-1]:
            if gt_match[j] > -1:
                continue
            iou = overlaps[i, j]
            if iou < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
               pred_masks, iou_threshold=0.5):
    """Average precision at `iou_threshold` (mask IoU), VOC-style (all points).
    Returns (mAP, precisions, recalls, overlaps)."""
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
        iou_threshold)
    if len(gt_match) == 0:
        precisions = np.array([0.0, 0.0])
        recalls = np.array([0.0, 1.0])
        return (1.0 if len(pred_match) == 0 else 0.0), precisions, recalls, overlaps
    tp = np.cumsum(pred_match > -1)
    precisions = tp / (np.arange(len(pred_match)) + 1)
    recalls = tp.astype(np.float32) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = max(precisions[i], precisions[i + 1])
    idx = np.where(recalls[:-1] != recalls[1:])[0] + 1
    m_ap = float(np.sum((recalls[idx] - recalls[idx - 1]) * precisions[idx]))
    return m_ap, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                     pred_mask, iou_thresholds=None, verbose=1):
    """Mean AP over IoU thresholds (default 0.5:0.95:0.05)."""
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 1.0, 0.05)
    aps = []
    for t in iou_thresholds:
        ap, *_ = compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                            pred_mask, iou_threshold=t)
        aps.append(ap)
        if verbose:
            print(f"AP @{t:.2f}:\t {ap:.3f}")
    ap = float(np.mean(aps)) if aps else 0.0
    if verbose:
        print(f"AP @{iou_thresholds[0]:.2f}-{iou_thresholds[-1]:.2f}:\t {ap:.3f}")
    return ap


def compute_recall(pred_boxes, gt_boxes, iou):
    """Recall of `gt_boxes` by `pred_boxes` at box IoU `iou`; returns (recall, positive ids)."""
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    if overlaps.size == 0:
        return 0.0, np.zeros([0], dtype=np.int64)
    iou_max = np.max(overlaps, axis=1)
    iou_argmax = np.argmax(overlaps, axis=1)
    positive_ids = np.where(iou_max >= iou)[0]
    matched = iou_argmax[positive_ids]
    recall = len(set(matched)) / max(gt_boxes.shape[0], 1)
    return recall, positive_ids
