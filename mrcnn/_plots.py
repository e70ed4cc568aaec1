"""matterport's inspection plots of `mrcnn.visualize` (re-exported there): boxes before and
after refinement, ROIs with their targets, precision-recall, the overlaps grid, ground truth
against predictions, and the weight statistics table. Each drawing function returns its
matplotlib figure (matterport returned nothing); nothing needs OpenCV or IPython.
"""

from __future__ import annotations

import itertools

import numpy as np

from mrcnn import utils
from mrcnn.visualize import _outline, apply_mask, display_instances, plt, random_colors
from matplotlib import lines, patches  # noqa: E402  (after mrcnn.visualize chose the backend)
from matplotlib.patches import Polygon  # noqa: E402


def _new_axes(ax, figsize=(12, 12)):
    if ax is None:
        fig, ax = plt.subplots(1, figsize=figsize)
        return fig, ax
    return ax.figure, ax


def draw_box(image, box, color):
    """Draw a 2-pixel rectangle outline (y1, x1, y2, x2, pixels) of `color` (RGB) into
    `image` (changed in place and returned). NumPy only (matterport used OpenCV)."""
    height, width = image.shape[:2]
    y1, x1, y2, x2 = (int(v) for v in np.asarray(box)[:4])
    y1, y2 = np.clip([y1, y2], 0, height - 1)
    x1, x2 = np.clip([x1, x2], 0, width - 1)
    color = np.asarray(color, image.dtype)
    image[y1:min(y1 + 2, y2 + 1), x1:x2 + 1] = color
    image[max(y2 - 1, y1):y2 + 1, x1:x2 + 1] = color
    image[y1:y2 + 1, x1:min(x1 + 2, x2 + 1)] = color
    image[y1:y2 + 1, max(x2 - 1, x1):x2 + 1] = color
    return image


def draw_boxes(image, boxes=None, refined_boxes=None, masks=None, captions=None,
               visibilities=None, title="", ax=None):
    """Boxes (dotted) and their refined versions (solid, joined to the original by a line),
    optional masks [H, W, N] and captions. visibilities: 0 grey, 1 dotted, 2 solid."""
    assert boxes is not None or refined_boxes is not None
    n = (boxes if boxes is not None else refined_boxes).shape[0]
    fig, ax = _new_axes(ax)
    colors = random_colors(n)
    margin = image.shape[0] // 10
    ax.set_ylim(image.shape[0] + margin, -margin)
    ax.set_xlim(-margin, image.shape[1] + margin)
    ax.axis("off")
    ax.set_title(title)
    canvas = np.asarray(image).astype(np.float64).copy()
    for i in range(n):
        visibility = visibilities[i] if visibilities is not None else 1
        color = "gray" if visibility == 0 else colors[i]
        style = "solid" if visibility == 2 else "dotted"
        alpha = 0.5 if visibility == 0 else 1.0
        corner = None
        if boxes is not None:
            if not np.any(boxes[i]):
                continue
            y1, x1, y2, x2 = boxes[i][:4]
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                           alpha=alpha, linestyle=style, edgecolor=color,
                                           facecolor="none"))
            corner = (x1, y1)
        if refined_boxes is not None and visibility > 0:
            ry1, rx1, ry2, rx2 = refined_boxes[i][:4]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            if corner is not None:
                ax.add_line(lines.Line2D([corner[0], rx1], [corner[1], ry1], color=color))
            corner = (rx1, ry1)
        if captions is not None and corner is not None:
            ax.text(corner[0], corner[1], captions[i], size=11, verticalalignment="top",
                    color="w", bbox={"facecolor": color, "alpha": 0.5, "pad": 2,
                                     "edgecolor": "none"})
        if masks is not None:
            mask = np.asarray(masks)[:, :, i]
            canvas = apply_mask(canvas, mask, color if visibility else (0.5, 0.5, 0.5))
            for verts in _outline(mask.astype(np.uint8)):
                ax.add_patch(Polygon(verts, facecolor="none", edgecolor=color))
    ax.imshow(np.clip(canvas, 0, 255).astype(np.uint8))
    return fig


def draw_rois(image, rois, refined_rois, mask, class_ids, class_names, limit=10):
    """Training ROIs [N, 4] (dashed; grey if negative), the positives' refined boxes
    [N, 4] and their box-relative masks [N, m, m] pasted back, at most `limit` at random.
    Prints the positive / negative counts. Returns the figure."""
    rois = np.asarray(rois)
    ids = np.arange(rois.shape[0])
    if ids.shape[0] > limit:
        ids = np.random.choice(ids, limit, replace=False)
    fig, ax = plt.subplots(1, figsize=(12, 12))
    ax.set_title(f"Showing {len(ids)} random ROIs out of {rois.shape[0]}"
                 if rois.shape[0] > limit else f"{len(ids)} ROIs")
    ax.set_ylim(image.shape[0] + 20, -20)
    ax.set_xlim(-50, image.shape[1] + 20)
    ax.axis("off")
    canvas = np.asarray(image).astype(np.float64).copy()
    for i in ids:
        color = tuple(np.random.rand(3))
        class_id = int(class_ids[i])
        y1, x1, y2, x2 = rois[i][:4]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                       edgecolor=color if class_id else "gray",
                                       facecolor="none", linestyle="dashed"))
        if class_id:
            ry1, rx1, ry2, rx2 = refined_rois[i][:4]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
            ax.text(rx1, ry1 + 8, class_names[class_id], color="w", size=11)
            full = utils.unmold_mask(mask[i], rois[i][:4], image.shape)
            canvas = apply_mask(canvas, full, color)
    ax.imshow(np.clip(canvas, 0, 255).astype(np.uint8))
    class_ids = np.asarray(class_ids)
    print("Positive ROIs: ", int(np.sum(class_ids > 0)))
    print("Negative ROIs: ", int(np.sum(class_ids == 0)))
    print(f"Positive Ratio: {np.sum(class_ids > 0) / max(len(class_ids), 1):.2f}")
    return fig


def plot_precision_recall(AP, precisions, recalls):
    """The precision-recall curve that `utils.compute_ap` returns, titled with its AP."""
    fig, ax = plt.subplots(1)
    ax.set_title(f"Precision-Recall Curve. AP@50 = {AP:.3f}")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.plot(recalls, precisions)
    return fig


def plot_overlaps(gt_class_ids, pred_class_ids, pred_scores, overlaps, class_names,
                  threshold=0.5):
    """A grid of IoU overlaps [predictions, ground truth], each cell above `threshold`
    marked "match" (same class) or "wrong"."""
    gt_class_ids = np.asarray(gt_class_ids)
    pred_class_ids = np.asarray(pred_class_ids)
    gt_class_ids = gt_class_ids[gt_class_ids != 0]
    pred_class_ids = pred_class_ids[pred_class_ids != 0]
    overlaps = np.asarray(overlaps)
    fig = plt.figure(figsize=(12, 10))
    plt.imshow(overlaps, interpolation="nearest", cmap=plt.cm.Blues)
    plt.yticks(np.arange(len(pred_class_ids)),
               [f"{class_names[int(c)]} ({pred_scores[i]:.2f})"
                for i, c in enumerate(pred_class_ids)])
    plt.xticks(np.arange(len(gt_class_ids)), [class_names[int(c)] for c in gt_class_ids],
               rotation=90)
    half = overlaps.max() / 2.0 if overlaps.size else 0.0
    for i, j in itertools.product(range(overlaps.shape[0]), range(overlaps.shape[1])):
        text = ""
        if overlaps[i, j] > threshold:
            text = "match" if gt_class_ids[j] == pred_class_ids[i] else "wrong"
        color = ("white" if overlaps[i, j] > half else "black" if overlaps[i, j] > 0
                 else "grey")
        plt.text(j, i, f"{overlaps[i, j]:.3f}\n{text}", horizontalalignment="center",
                 verticalalignment="center", fontsize=9, color=color)
    plt.tight_layout()
    plt.xlabel("Ground Truth")
    plt.ylabel("Predictions")
    return fig


def display_differences(image, gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                        pred_score, pred_mask, class_names, title="", ax=None,
                        show_mask=True, show_box=True, iou_threshold=0.5, score_threshold=0.5):
    """Ground truth (green) and predictions (red) on one image, each prediction captioned
    "score / IoU" (`utils.compute_matches` pairs them)."""
    gt_match, pred_match, overlaps = utils.compute_matches(
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    order = np.argsort(pred_score)[::-1]  # the order compute_matches' results are in
    pred_box, pred_class_id = np.asarray(pred_box)[order], np.asarray(pred_class_id)[order]
    pred_score, pred_mask = np.asarray(pred_score)[order], np.asarray(pred_mask)[..., order]
    colors = [(0, 1, 0, 0.8)] * len(gt_match) + [(1, 0, 0, 1)] * len(pred_match)
    captions = [""] * len(gt_match) + [
        f"{pred_score[i]:.2f} / "
        f"{(overlaps[i, int(pred_match[i])] if pred_match[i] > -1 else overlaps[i].max(initial=0)):.2f}"
        for i in range(len(pred_match))]
    return display_instances(
        image, np.concatenate([np.asarray(gt_box).reshape(-1, 4), pred_box.reshape(-1, 4)]),
        np.concatenate([np.asarray(gt_mask), pred_mask], axis=-1),
        np.concatenate([gt_class_id, pred_class_id]).astype(np.int32), class_names,
        np.concatenate([np.zeros([len(gt_match)]), pred_score]), ax=ax, show_bbox=show_box,
        show_mask=show_mask, colors=colors, captions=captions,
        title=title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU")


def display_table(table):
    """Print rows of values as a fixed-width text table and return the text (matterport
    rendered HTML through IPython)."""
    rows = [[str(c) for c in row] for row in table]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    print(text)
    return text


def display_weight_stats(model):
    """Min, max and standard deviation of every weight of `model` (an mrcnn `MaskRCNN`),
    flagging constant arrays ("*** dead?", conv biases excepted) and values beyond 1000
    ("*** Overflow?"). Prints the table and returns its rows (header first)."""
    table = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]]
    for layer in model.get_trainable_layers():
        for i, (variable, w) in enumerate(zip(layer.weights, layer.get_weights())):
            alert = ""
            if w.min() == w.max() and not (type(layer).__name__ == "Conv2D" and i == 1):
                alert += " *** dead?"
            if np.abs(w.min()) > 1000 or np.abs(w.max()) > 1000:
                alert += " *** Overflow?"
            name = getattr(variable, "path", None) or f"{layer.name}/{variable.name}"
            table.append([name + alert, str(w.shape), f"{w.min():+9.4f}", f"{w.max():+10.4f}",
                          f"{w.std():+9.4f}"])
    display_table(table)
    return table
