"""The Mask R-CNN keras.Model: it composes backbone + FPN, RPN and ROI heads, owns its
`train_step` / `test_step` (targets computed in-graph from padded ground truth) and its
inference (`detect`, and a graph function that the SavedModel export serves).
"""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf

from casting.config import LAYER_GROUPS, LOSS_NAMES, Config
from casting.distribute import is_multi_worker
from casting.model import losses as L
from casting.model import rpn as rpn_lib
from casting.model.anchors import anchors_for_config, generate_anchors
from casting.model.fpn import build_backbone_fpn
from casting.model.roi_heads import (
    BoxHead, MaskHead, mask_targets_flat, num_mask_slots, pool, pool_flat, positive_rois,
    refine_detections, sample_rois,
)
from casting.model.transform import paste_masks, resize_and_pad_tf, to_rgb
from casting.model.xla import compiled
from casting.precision import loss_scale, policy_scope, scaled_step_logs, wrap_optimizer

_HEADS = r"(mrcnn_.*)|(rpn_.*)|(fpn_.*)"
LAYER_REGEX = {
    "heads": _HEADS,
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|" + _HEADS,
    "5+": r"(res5.*)|(bn5.*)|" + _HEADS,
    "all": r".*",
}


@keras.saving.register_keras_serializable(package="casting")
class MaskRCNN(keras.Model):
    """Mask R-CNN with a ResNet-FPN backbone. See docs/design.md for the batch format."""

    def __init__(self, config: Config | dict, **kwargs):
        kwargs.setdefault("name", "mask_rcnn")
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = Config.from_dict(config)
        self.config = config
        # every layer computes in config.precision (casting.precision); variables, the
        # heads' outputs, boxes, NMS and the losses stay float32
        with policy_scope(config.precision):
            self.backbone_fpn = build_backbone_fpn(config)
            self.rpn = rpn_lib.RPNHead(config.anchors_per_location, config.rpn_conv_channels,
                                       name="rpn_model")
            self.box_head = BoxHead(config.num_classes, config.fc_layers_size,
                                    config.pool_size, config.train_bn, config.norm,
                                    name="mrcnn_box_head")
            self.mask_head = MaskHead(config.num_classes, config.fpn_channels,
                                      config.mask_pool_size, config.train_bn, config.norm,
                                      name="mrcnn_mask_head")
            c = config.fpn_channels
            self.rpn.build((None, None, None, c))
            self.box_head.build((None, None, config.pool_size, config.pool_size, c))
            self.mask_head.build((None, None, config.mask_pool_size, config.mask_pool_size,
                                  c))
        self._backbone = compiled(self.backbone_fpn, "backbone" in config.xla)
        self._box_head = compiled(self.box_head, "box_head" in config.xla)
        self.anchors = anchors_for_config(config)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss",) + LOSS_NAMES}
        self.trainable_group = None
        self.set_trainable_layers(config.layers)
        self._infer_fn = None
        self.built = True

    # ---- configuration / serialisation -------------------------------------------------
    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(Config.from_dict(config["config"]), name=config.get("name", "mask_rcnn"))

    # ---- layers ------------------------------------------------------------------------
    def named_layers(self) -> dict[str, keras.layers.Layer]:
        """Every weight-carrying layer under its matterport name."""
        found = {}
        for layer in self.backbone_fpn.layers:
            if layer.weights:
                found[layer.name] = layer
        for container in (self.rpn, self.box_head, self.mask_head):
            for layer in container._flatten_layers(include_self=False):
                if layer.weights:
                    found[layer.name] = layer
        return found

    def set_trainable_layers(self, group: str) -> None:
        """Train only a layer group (`heads`, `3+`, `4+`, `5+`, `all`) or the layers whose
        names match a regular expression. Frozen BatchNorm stays frozen (config.train_bn)."""
        regex = LAYER_REGEX.get(group, group)
        if group not in LAYER_GROUPS:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"layers must be one of {LAYER_GROUPS} or a regex: {exc}")
        for name, layer in self.named_layers().items():
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = bool(re.fullmatch(regex, name)) and (self.config.train_bn or not is_bn)
        self.trainable_group = group
        # a compiled train function captured the old variable list
        self.train_function = None
        self.test_function = None

    def trainable_candidates(self) -> list:
        """Every variable any layer group may train (what the optimizer is built for)."""
        current = self.trainable_group
        self.set_trainable_layers("all")
        variables = list(self.trainable_variables)
        self.set_trainable_layers(current)
        return variables

    # ---- compile -----------------------------------------------------------------------
    def compile(self, optimizer=None, jit_compile=False, **kwargs):
        """Compile with SGD (momentum, clipping from the config) unless an optimizer is given.

        XLA stays off by default: proposal NMS and per-level ROI pooling have data-dependent
        shapes. The optimizer is built for every variable of every layer group, so that
        changing the trainable group between stages keeps one optimizer state."""
        if optimizer is None:
            optimizer = keras.optimizers.SGD(
                learning_rate=self.config.learning_rate, momentum=self.config.momentum,
                global_clipnorm=self.config.gradient_clip_norm or None)
        optimizer = wrap_optimizer(optimizer, self.config.precision)
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        self.optimizer.build(self.trainable_candidates())

    @property
    def metrics(self):
        return list(self.trackers.values())

    # ---- forward pieces ----------------------------------------------------------------
    def pyramid(self, images: tf.Tensor, training=False):
        mean = tf.constant(self.config.mean_pixel, tf.float32)
        return self._backbone(tf.cast(images, tf.float32) - mean, training=training)

    def compute_losses(self, batch, training=False, seed=None) -> dict[str, tf.Tensor]:
        """The five losses of a batch. `seed` ([2] integers) makes the anchor and ROI
        sampling a function of it (training passes the config seed and the step)."""
        cfg = self.config
        gt_boxes = tf.cast(batch["gt_boxes"], tf.float32)
        gt_class_ids = tf.cast(batch["gt_class_ids"], tf.int32)
        pyramid = self.pyramid(batch["image"], training=training)
        rpn_logits, rpn_deltas = self.rpn(pyramid)
        # training crops (config.train_crop_size) are smaller than the inference size
        size = batch["image"].shape[1] or cfg.image_size
        anchors = tf.constant(self.anchors_for_size(size))
        match, rpn_target = rpn_lib.rpn_targets(anchors, gt_boxes, gt_class_ids, cfg, seed=seed)
        proposals = rpn_lib.generate_proposals(rpn_logits, rpn_deltas, anchors, cfg,
                                               cfg.post_nms_rois_training, image_size=size)
        rois = sample_rois(proposals, gt_boxes, gt_class_ids, cfg, seed=seed)
        class_logits, deltas = self._box_head(pool(pyramid, rois["rois"], cfg.pool_size),
                                              training=training)
        # The mask head trains on the positive ROIs that exist (at most mask_rois_per_image
        # of an image's), as one flat list [1, P].
        pos = positive_rois(rois, num_mask_slots(cfg))
        pooled = pool_flat(pyramid, pos["rois"], pos["image_index"], cfg.mask_pool_size)
        mask_logits = self.mask_head(pooled[None], training=training)
        targets = mask_targets_flat(batch["gt_masks"], pos["rois"], pos["image_index"],
                                    pos["gt_index"], cfg.mask_shape)[None]
        pos_classes = pos["class_ids"][None]
        return {
            "rpn_class_loss": L.rpn_class_loss(match, rpn_logits),
            "rpn_bbox_loss": L.rpn_bbox_loss(match, rpn_target, rpn_deltas),
            "mrcnn_class_loss": L.mrcnn_class_loss(rois["class_ids"], class_logits,
                                                   rois["valid"], cfg.roi_foreground_weight),
            "mrcnn_bbox_loss": L.mrcnn_bbox_loss(rois["class_ids"], rois["deltas"], deltas,
                                                 rois["positive"]),
            "mrcnn_mask_loss": L.mrcnn_mask_loss(pos_classes, targets, mask_logits,
                                                 tf.ones_like(pos_classes, tf.bool)),
        }

    def anchors_for_size(self, size: int) -> np.ndarray:
        """The pyramid's anchors for a square input of `size` (self.anchors at image_size)."""
        size = int(size)
        if size == self.config.image_size:
            return self.anchors
        cfg = self.config
        return generate_anchors(size, cfg.rpn_anchor_scales, cfg.rpn_anchor_ratios,
                                cfg.backbone_strides)

    def calibrate_batchnorm(self, batch) -> int:
        """Set every BatchNorm's moving statistics from one batch of training data.

        Frozen BatchNorm with freshly initialised statistics (mean 0, variance 1) leaves a
        deep ResNet unnormalised, and its activations explode. Without pretrained weights,
        call this once before training: one forward pass in training mode with momentum 0
        makes each layer's statistics those of the batch, so the frozen network starts
        normalised. Returns the number of BatchNorm layers set (0 with GroupNorm: nothing
        to do)."""
        bns = [layer for layer in self.named_layers().values()
               if isinstance(layer, keras.layers.BatchNormalization)]
        if not bns:
            return 0
        saved = [(bn.trainable, bn.momentum) for bn in bns]
        for bn in bns:
            bn.trainable = True
            bn.momentum = 0.0
        try:
            self.compute_losses(batch, training=True)
        finally:
            for bn, (trainable, momentum) in zip(bns, saved):
                bn.trainable = trainable
                bn.momentum = momentum
            self.train_function = None
            self.test_function = None
        return len(bns)

    def weight_decay_loss(self) -> tf.Tensor:
        """0.5 * weight_decay * sum of squared conv/dense kernels being trained."""
        kernels = [v for v in self.trainable_variables if v.name == "kernel"]
        if not kernels or not self.config.weight_decay:
            return tf.constant(0.0)
        return 0.5 * self.config.weight_decay * tf.add_n(
            [tf.reduce_sum(tf.square(v)) for v in kernels])

    def total_loss(self, losses: dict[str, tf.Tensor]) -> tf.Tensor:
        weights = self.config.loss_weights
        return tf.add_n([weights[n] * losses[n] for n in LOSS_NAMES]) + self.weight_decay_loss()

    def _log(self, losses, total, grad_norm=None, scale=None):
        self.trackers["loss"].update_state(total)
        for name in LOSS_NAMES:
            self.trackers[name].update_state(losses[name])
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        if grad_norm is not None:  # this step's, not a mean: the loop stops on a NaN
            logs["grad_norm"] = grad_norm
        if scale is not None:
            logs["loss_scale"] = scale
        if is_multi_worker():
            # Keras 3 averages the replicas' logs with strategy.reduce(MEAN, axis=0) across
            # workers, which rejects scalars (keras-team/keras#20585): give it shape [1].
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 (keras-team/keras#20329, open): under tf.distribute with several
        # replicas, fit() first pulls a batch and calls strategy.reduce() on it, which
        # fails for dict batches like ours. This model builds all its variables in
        # __init__, so there is nothing to build symbolically: skip that step.
        if self.built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def step_seed(self) -> tf.Tensor:
        """The sampling seed of this training step: (config seed, optimizer step), folded
        with the replica. Stateless, so a resumed run samples as an uninterrupted one."""
        seed = tf.stack([tf.constant(self.config.seed, tf.int64),
                         tf.cast(self.optimizer.iterations, tf.int64)])
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(
                seed, tf.cast(replica.replica_id_in_sync_group, tf.int32))
        return seed

    def train_step(self, data):
        seed = self.step_seed()
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data, training=True, seed=seed)
            total = self.total_loss(losses)
            # float16: the loss times the loss scale, so small gradients do not underflow
            # (the LossScaleOptimizer unscales them); otherwise the loss itself
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        scale = loss_scale(self.optimizer)
        grad_norm = tf.linalg.global_norm([g for g in grads if g is not None])
        if scale is not None:
            grad_norm = grad_norm / scale
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            # The optimizer sums the replicas' gradients: each replica contributes 1/N of
            # its own, clipped first (the optimizer's clipping would see the 1/N parts), so
            # the update is the mean over the global batch with the same norm bound.
            clip = float(self.config.gradient_clip_norm or 0)
            if clip > 0:
                if scale is not None:  # the same bound on the unscaled gradients
                    clip = clip * scale
                kept = [i for i, g in enumerate(grads) if g is not None]
                clipped, _ = tf.clip_by_global_norm([grads[i] for i in kept], clip)
                grads = list(grads)
                for i, g in zip(kept, clipped):
                    grads[i] = g
            grads = [None if g is None else g / replicas for g in grads]
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables) if g is not None])
        if scale is None:
            return self._log(losses, total, grad_norm)
        # the scale after the step: halved when this step overflowed and was skipped
        return self._log(losses, total, *scaled_step_logs(grad_norm, loss_scale(self.optimizer)))

    def test_step(self, data):
        losses = self.compute_losses(data, training=False)
        return self._log(losses, self.total_loss(losses))

    # ---- inference ---------------------------------------------------------------------
    def inference_stages(self, images: tf.Tensor, image_info: tf.Tensor, min_confidence=None,
                         pyramid=None) -> dict:
        """Every stage of graph inference, by name (model pixels): pyramid (P2-P6),
        rpn_logits, rpn_deltas, proposals, class_logits, deltas, boxes, scores, class_ids,
        num_detections, and mask_logits [B, K, m, m, classes] on the first K = max
        num_detections boxes. `pyramid`: already computed from these images (mrcnn's
        run_graph computes it with inner backbone layers alongside)."""
        cfg = self.config
        if min_confidence is None:
            min_confidence = cfg.detection_min_confidence
        if pyramid is None:
            pyramid = self.pyramid(images, training=False)
        rpn_logits, rpn_deltas = self.rpn(pyramid)
        proposals = rpn_lib.generate_proposals(rpn_logits, rpn_deltas, tf.constant(self.anchors),
                                               cfg, cfg.post_nms_rois_inference)
        class_logits, deltas = self._box_head(pool(pyramid, proposals, cfg.pool_size))
        info = tf.cast(image_info, tf.float32)
        zeros = tf.zeros_like(info[:, 0])
        windows = tf.stack([zeros, zeros, info[:, 0] * info[:, 2], info[:, 1] * info[:, 2]], 1)
        boxes, scores, class_ids, num = refine_detections(
            proposals, class_logits, deltas, windows, cfg, min_confidence)
        # the mask head runs on the detections that exist, not on the padding
        k = tf.reduce_max(num)
        mask_logits = self.mask_head(pool(pyramid, boxes[:, :k], cfg.mask_pool_size))
        return {"pyramid": pyramid, "rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas,
                "proposals": proposals, "class_logits": class_logits, "deltas": deltas,
                "boxes": boxes, "scores": scores, "class_ids": class_ids,
                "num_detections": num, "mask_logits": mask_logits}

    def infer(self, images: tf.Tensor, image_info: tf.Tensor, min_confidence=None):
        """Graph inference on model-size images [B, S, S, 3] (RGB 0-255, padded) with
        image_info [B, 4] (original h, w, scale, 0).

        Returns a dict: boxes [B, D, 4] (model pixels), scores [B, D], class_ids [B, D],
        masks [B, D, m, m] (box-relative probabilities), num_detections [B].
        """
        stages = self.inference_stages(images, image_info, min_confidence)
        mask_logits, class_ids = stages["mask_logits"], stages["class_ids"]
        k = tf.shape(mask_logits)[1]
        chosen = tf.gather(tf.transpose(mask_logits, [0, 1, 4, 2, 3]), class_ids[:, :k],
                           batch_dims=2)
        masks = tf.pad(tf.sigmoid(chosen),
                       [[0, 0], [0, self.config.detection_max_instances - k], [0, 0], [0, 0]])
        return {"boxes": stages["boxes"], "scores": stages["scores"], "class_ids": class_ids,
                "masks": masks, "num_detections": stages["num_detections"]}

    def call(self, inputs, training=False):
        return self.infer(inputs["image"], inputs["image_info"])

    def inference_function(self):
        """A traced graph function (images, image_info, min_confidence) -> detections."""
        if self._infer_fn is None:
            size = self.config.image_size
            self._infer_fn = tf.function(
                lambda images, info, conf: self.infer(images, info, conf),
                input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32),
                                 tf.TensorSpec([None, 4], tf.float32),
                                 tf.TensorSpec([], tf.float32)],
                reduce_retracing=True)
        return self._infer_fn

    def detect(self, images, min_confidence: float | None = None, batch_size: int = 1):
        """Detect on a list of RGB images (HxWx3, HxW or HxWx4 arrays) of any size.

        Returns one dict per image: boxes float32 [K, 4] (y1, x1, y2, x2 in the image's own
        pixels), class_ids int32 [K] (1-based into config.class_names), scores float32 [K],
        masks bool [K, H, W].
        """
        conf = self.config.detection_min_confidence if min_confidence is None else min_confidence
        fn = self.inference_function()
        results = []
        for start in range(0, len(images), batch_size):
            chunk = [to_rgb(im) for im in images[start:start + batch_size]]
            prepared, infos = [], []
            for im in chunk:
                padded, scale = resize_and_pad_tf(tf.convert_to_tensor(im), self.config.image_size)
                prepared.append(padded)
                infos.append([im.shape[0], im.shape[1], float(scale), 0.0])
            out = fn(tf.stack(prepared), tf.constant(infos, tf.float32),
                     tf.constant(conf, tf.float32))
            out = {k: v.numpy() for k, v in out.items()}
            for i, im in enumerate(chunk):
                results.append(self._to_image_detections(out, i, im.shape[0], im.shape[1],
                                                         infos[i][2]))
        return results

    @staticmethod
    def _to_image_detections(out, i, height, width, scale):
        n = int(out["num_detections"][i])
        boxes = out["boxes"][i, :n] / scale
        boxes = np.stack([np.clip(boxes[:, 0], 0, height), np.clip(boxes[:, 1], 0, width),
                          np.clip(boxes[:, 2], 0, height), np.clip(boxes[:, 3], 0, width)], 1)
        masks = paste_masks(out["masks"][i, :n], boxes, height, width)
        return {"boxes": boxes.astype(np.float32),
                "class_ids": out["class_ids"][i, :n].astype(np.int32),
                "scores": out["scores"][i, :n].astype(np.float32),
                "masks": masks}
