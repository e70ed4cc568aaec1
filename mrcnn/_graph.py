"""matterport's graph-level helpers of `mrcnn.model` (re-exported there), and the forward pass
that `MaskRCNN.run_graph` reads its intermediate tensors from.

`forward(network, images, image_info, keys, gt)` runs the model's own pieces (backbone + FPN,
RPN head, `generate_proposals`, ROI Align, box head, `refine_detections`, mask head) in the
order `casting.model.MaskRCNN.infer` does, keeping what each step produced. Box-valued
outputs are normalised the matterport way (`utils.norm_boxes` of the model's input square).
"""

from __future__ import annotations

import numpy as np

# run_graph keys -> what they are (docs/matterport.md lists them too)
KEYS = {
    "input_image": "the network's input: molded images (RGB minus MEAN_PIXEL) [B, S, S, 3]",
    "anchors": "every anchor, normalised [B, A, 4] (MaskRCNN.anchors: pixels)",
    "C2": "ResNet stage outputs C2..C5 (also any backbone/FPN layer by its name)",
    "P2": "FPN outputs P2..P6 [B, S/stride, S/stride, TOP_DOWN_PYRAMID_SIZE]",
    "rpn_class_logits": "RPN logits [B, A, 2] (background, object)",
    "rpn_class": "RPN probabilities [B, A, 2]",
    "rpn_bbox": "RPN deltas [B, A, 4] (divided by RPN_BBOX_STD_DEV)",
    "pre_nms_anchors": "the PRE_NMS_LIMIT best-scoring anchors, normalised [B, K, 4]",
    "refined_anchors": "those anchors with their deltas applied [B, K, 4]",
    "refined_anchors_clipped": "the same, clipped to the image [B, K, 4]",
    "post_nms_anchor_ix": "indices into the K kept by NMS, -1 padded [B, P]",
    "proposals": "the proposals (alias ROI), normalised, zero padded [B, P, 4]",
    "mrcnn_class_logits": "box head logits on the proposals [B, P, NUM_CLASSES]",
    "mrcnn_class": "box head probabilities on the proposals [B, P, NUM_CLASSES]",
    "mrcnn_bbox": "box head deltas on the proposals [B, P, NUM_CLASSES, 4]",
    "detections": "(alias mrcnn_detection) [B, D, (y1, x1, y2, x2, class_id, score)], "
                  "boxes normalised, zero padded",
    "num_detections": "valid rows of detections [B]",
    "mrcnn_mask": "mask probabilities of every class on the detections [B, D, m, m, "
                  "NUM_CLASSES]",
    "rpn_match": "with ground truth: anchor labels 1 / -1 / 0 [B, A]",
    "rpn_target_bbox": "with ground truth: RPN delta targets per anchor [B, A, 4]",
    "rois": "with ground truth: the sampled training ROIs, normalised, positives first "
            "[B, TRAIN_ROIS_PER_IMAGE, 4]",
    "target_class_ids": "with ground truth: their classes (0 negative or padding) [B, T]",
    "target_bbox": "with ground truth: their delta targets (divided by BBOX_STD_DEV) [B, T, 4]",
    "target_mask": "with ground truth: their mask targets [B, T, m, m]",
}
ALIASES = {"ROI": "proposals", "mrcnn_detection": "detections", "input_anchors": "anchors",
           "rpn_bbox_pred": "rpn_bbox"}
GT_KEYS = ("rpn_match", "rpn_target_bbox", "rois", "target_class_ids", "target_bbox",
           "target_mask")
_RPN_STAGES = ("pre_nms_anchors", "refined_anchors", "refined_anchors_clipped",
               "post_nms_anchor_ix")


# ------------------------------------------------------------------------------------------
# matterport's module-level graph helpers
# ------------------------------------------------------------------------------------------
def compute_backbone_shapes(config, image_shape):
    """[[height, width]] of each pyramid level's feature map for an input of `image_shape`."""
    from casting.model.anchors import feature_shapes

    if callable(config.BACKBONE):
        return config.COMPUTE_BACKBONE_SHAPE(image_shape)
    if config.BACKBONE not in ("resnet50", "resnet101"):
        raise ValueError(f"BACKBONE must be 'resnet50' or 'resnet101', not {config.BACKBONE!r}")
    strides = list(config.BACKBONE_STRIDES)
    rows = feature_shapes(int(image_shape[0]), strides)
    cols = feature_shapes(int(image_shape[1]), strides)
    return np.array([[r[0], c[0]] for r, c in zip(rows, cols)])


def parse_image_meta_graph(meta):
    """In-graph `parse_image_meta`: the fields of image metas [B, meta_size] as tensors."""
    import tensorflow as tf

    meta = tf.convert_to_tensor(meta)
    return {"image_id": meta[:, 0], "original_image_shape": meta[:, 1:4],
            "image_shape": meta[:, 4:7], "window": meta[:, 7:11], "scale": meta[:, 11],
            "active_class_ids": meta[:, 12:]}


def norm_boxes_graph(boxes, shape):
    """In-graph `utils.norm_boxes`: pixel boxes -> normalised (shape: (height, width))."""
    import tensorflow as tf

    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - 1.0
    return (tf.cast(boxes, tf.float32) - tf.constant([0.0, 0.0, 1.0, 1.0])) / scale


def denorm_boxes_graph(boxes, shape):
    """In-graph `utils.denorm_boxes`: normalised -> pixel boxes, rounded to int32."""
    import tensorflow as tf

    h, w = tf.split(tf.cast(shape, tf.float32), 2)
    scale = tf.concat([h, w, h, w], axis=-1) - 1.0
    shift = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.cast(tf.round(tf.cast(boxes, tf.float32) * scale + shift), tf.int32)


def _casting_config(config):
    return config.to_casting_config() if hasattr(config, "to_casting_config") else config


def _seed(seed):
    import tensorflow as tf

    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    return tf.constant([int(seed), 0], tf.int64)


def build_rpn_targets(image_shape, anchors, gt_class_ids, gt_boxes, config, seed=None):
    """RPN training targets for one image, computed by the model's own
    `casting.model.rpn.rpn_targets` and laid out as matterport's:

    rpn_match int32 [A]: 1 positive, -1 negative, 0 neutral (at most
    RPN_TRAIN_ANCHORS_PER_IMAGE non-zero, at most half positive); rpn_bbox float32
    [RPN_TRAIN_ANCHORS_PER_IMAGE, 4]: the positives' deltas (divided by RPN_BBOX_STD_DEV) in
    anchor order, zero padded. Crowd boxes (negative class ids) are not matched; anchors
    overlapping one are made neutral instead of negative. `seed` (default: drawn from
    NumPy's global generator) fixes the sampling."""
    import tensorflow as tf

    from casting.model.rpn import rpn_targets

    cfg = _casting_config(config)
    anchors = np.asarray(anchors, np.float32).reshape(-1, 4)
    ids = np.asarray(gt_class_ids, np.int32).reshape(-1)
    boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    crowd = boxes[ids < 0]
    boxes, ids = boxes[ids > 0], ids[ids > 0]
    if not len(ids):  # one padding slot keeps the shapes static
        boxes, ids = np.zeros((1, 4), np.float32), np.zeros((1,), np.int32)
    match, targets = rpn_targets(tf.constant(anchors), tf.constant(boxes[None]),
                                 tf.constant(ids[None]), cfg, seed=_seed(seed))
    match, targets = match.numpy()[0], targets.numpy()[0]
    if len(crowd):
        from mrcnn.utils import compute_overlaps

        near_crowd = compute_overlaps(anchors, crowd).max(axis=1) >= 0.001
        match[(match == -1) & near_crowd] = 0
    total = int(cfg.rpn_train_anchors_per_image)
    rpn_bbox = np.zeros((total, 4), np.float32)
    positive = targets[match == 1][:total]
    rpn_bbox[:len(positive)] = positive
    return match.astype(np.int32), rpn_bbox


# ------------------------------------------------------------------------------------------
# The forward pass that run_graph reads
# ------------------------------------------------------------------------------------------
def stage_aliases(backbone: str) -> dict[str, str]:
    """C2..C5 -> the last block of each ResNet stage; P2..P6 -> the FPN's output layers."""
    from casting.model.backbone import STAGE_BLOCKS

    blocks = STAGE_BLOCKS[backbone]
    out = {f"C{s + 2}": f"res{s + 2}{chr(ord('a') + n - 1)}_out" for s, n in enumerate(blocks)}
    out.update({f"P{k}": f"fpn_p{k}" for k in range(2, 7)})
    return out


def forward(network, images, image_info, keys, gt=None, seed=None):
    """Run the model once on raw padded images [B, S, S, 3] (RGB 0..255) with image_info
    [B, 4] (original h, w, scale, 0) and return {key: numpy array} for `keys` (run_graph keys
    or backbone layer names). `gt`: (class_ids [B, N], boxes [B, N, 4], masks [B, N, S, S])
    in model pixels, needed for the training-target keys."""
    import keras
    import tensorflow as tf

    from casting.model import ops
    from casting.model import rpn as rpn_lib
    from casting.model.roi_heads import mask_targets_flat, sample_rois

    cfg = network.config
    size = cfg.image_size
    scale = float(size - 1)
    shift = tf.constant([0.0, 0.0, 1.0, 1.0])

    def norm(boxes):
        return (boxes - shift) / scale

    images = tf.cast(images, tf.float32)
    x = images - tf.constant(cfg.mean_pixel, tf.float32)
    aliases = stage_aliases(cfg.backbone)
    layer_names = [aliases.get(k, k) for k in keys if k not in KEYS or k in aliases]
    bb = network.backbone_fpn
    if layer_names:  # one pass that also returns the requested inner layers
        probe = keras.Model(bb.input, list(bb.outputs) + [bb.get_layer(n).output
                                                          for n in layer_names])
        values = probe(x, training=False)
        pyramid, inner = values[:len(bb.outputs)], values[len(bb.outputs):]
    else:
        pyramid, inner = bb(x, training=False), []
    out = {"input_image": x}
    out.update({n: v for n, v in zip(layer_names, inner)})
    stages = network.inference_stages(images, image_info, pyramid=pyramid)
    logits, deltas, proposals = stages["rpn_logits"], stages["rpn_deltas"], stages["proposals"]
    anchors = tf.constant(network.anchors)
    out.update(rpn_class_logits=logits, rpn_class=tf.nn.softmax(logits), rpn_bbox=deltas,
               anchors=tf.broadcast_to(norm(anchors)[None], [tf.shape(x)[0], anchors.shape[0], 4]))
    out["proposals"] = tf.where(ops.box_area(proposals)[..., None] > 0, norm(proposals), 0.0)
    if any(k in _RPN_STAGES for k in keys):
        out.update(_rpn_stages(logits, deltas, anchors, cfg, norm))
    class_logits = stages["class_logits"]
    out.update(mrcnn_class_logits=class_logits, mrcnn_class=tf.nn.softmax(class_logits),
               mrcnn_bbox=stages["deltas"])
    boxes, scores, class_ids, num = (stages[n] for n in ("boxes", "scores", "class_ids",
                                                         "num_detections"))
    valid = tf.range(cfg.detection_max_instances)[None, :] < num[:, None]
    det = tf.concat([norm(boxes), tf.cast(class_ids, tf.float32)[..., None],
                     scores[..., None]], axis=-1)
    out["detections"] = tf.where(valid[..., None], det, 0.0)
    out["num_detections"] = num
    masks = tf.sigmoid(stages["mask_logits"])  # every class, matterport's layout
    padding = cfg.detection_max_instances - tf.shape(masks)[1]
    out["mrcnn_mask"] = tf.pad(masks, [[0, 0], [0, padding], [0, 0], [0, 0], [0, 0]])
    if gt is not None:
        gt_ids, gt_boxes, gt_masks = (tf.constant(a) for a in gt)
        match, rpn_target = rpn_lib.rpn_targets(anchors, gt_boxes, gt_ids, cfg, seed=seed)
        out.update(rpn_match=match, rpn_target_bbox=rpn_target)
        training_proposals = rpn_lib.generate_proposals(logits, deltas, anchors, cfg,
                                                        cfg.post_nms_rois_training)
        rois = sample_rois(training_proposals, gt_boxes, gt_ids, cfg, seed=seed)
        # matterport's layout: the valid rows first (positives, then negatives), then padding
        order = tf.argsort(tf.cast(~rois["valid"], tf.int32), axis=1, stable=True)
        rois = {n: tf.gather(v, order, batch_dims=1) for n, v in rois.items()}
        batch, total = tf.shape(order)[0], tf.shape(order)[1]
        targets = mask_targets_flat(
            gt_masks, tf.reshape(rois["rois"], [-1, 4]), tf.repeat(tf.range(batch), total),
            tf.reshape(rois["gt_index"], [-1]), cfg.mask_shape)
        targets = tf.reshape(targets, [batch, total, cfg.mask_shape, cfg.mask_shape])
        positive = rois["positive"]
        out.update(rois=tf.where(rois["valid"][..., None], norm(rois["rois"]), 0.0),
                   target_class_ids=rois["class_ids"], target_bbox=rois["deltas"],
                   target_mask=tf.where(positive[..., None, None], targets, 0.0))
    return {k: np.asarray(out[aliases.get(k, k)]) for k in keys}


def _rpn_stages(logits, deltas, anchors, cfg, norm):
    """The steps inside `generate_proposals`, kept: the top anchors, refined, clipped, and
    which of them NMS kept (matterport's ProposalLayer tensors)."""
    import tensorflow as tf

    from casting.model import ops

    scores = tf.nn.softmax(logits)[..., 1]
    pre_nms = min(cfg.pre_nms_limit, anchors.shape[0])
    top_scores, top_idx = tf.math.top_k(scores, k=pre_nms, sorted=True)
    top_anchors = tf.gather(anchors, top_idx)
    refined = ops.decode_boxes(tf.gather(deltas, top_idx, batch_dims=1), top_anchors,
                               cfg.rpn_bbox_std_dev)
    clipped = ops.clip_boxes(refined, cfg.image_size, cfg.image_size)
    num = cfg.post_nms_rois_inference

    def keep(args):
        b, s = args
        idx, valid = ops.nms_padded(b, s, num, cfg.rpn_nms_threshold)
        return tf.where(tf.range(num) < valid, idx, -1)

    kept = tf.map_fn(keep, (clipped, top_scores),
                     fn_output_signature=tf.TensorSpec([num], tf.int32))
    return {"pre_nms_anchors": norm(top_anchors), "refined_anchors": norm(refined),
            "refined_anchors_clipped": norm(clipped), "post_nms_anchor_ix": kept}
