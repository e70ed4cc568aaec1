"""matterport's inspection methods of `MaskRCNN` (`mold_inputs`, `unmold_detections`,
`get_anchors`, `detect_molded`, `run_graph`, ...) and the network subclass whose
`get_layer(name)` answers the names matterport's notebooks ask for.

matterport's `keras_model` was a TF1 graph, and its notebooks fetched tensors out of it
(`keras_model.get_layer("ROI").output`) to evaluate with `run_graph`. Here `run_graph` takes
keys naming what the model computes (`mrcnn._graph.KEYS`); `keras_model.get_layer(name)`
returns a `LayerOutput` whose `.output` is such a key, so the notebook lines run unchanged.
"""

from __future__ import annotations

import collections

import numpy as np

from mrcnn import _boxes
from mrcnn import _graph


class OutputKey(str):
    """The `.output` of `keras_model.get_layer(name)`: a run_graph key (a str)."""


class LayerOutput:
    """What `keras_model.get_layer(name)` returns for a name the inspection notebooks use:
    `.output` is a run_graph key; weights and other attributes come from the real layer of
    that name, when the model has one."""

    def __init__(self, name, key, layer=None):
        self.name, self.key, self.layer = name, key, layer

    @property
    def output(self):
        if self.key is None:
            raise ValueError(
                f"the output of layer {self.name!r} is not exposed (it runs inside a head); "
                f"run_graph offers these keys: {sorted(_graph.KEYS)} and every backbone/FPN "
                "layer name")
        return OutputKey(self.key)

    def __getattr__(self, attr):
        layer = self.__dict__.get("layer")
        if layer is None:
            raise AttributeError(
                f"{self.__dict__.get('name')!r} is an output of the model, not a layer with "
                f"weights: use .output with MaskRCNN.run_graph")
        return getattr(layer, attr)

    def __repr__(self):
        return f"LayerOutput({self.name!r}, key={self.key!r})"


_NETWORK_CLASS = []


def network_class():
    """`casting.model.MaskRCNN` whose `get_layer(name)` also finds nested layers and the
    outputs matterport's notebooks inspect (`ROI`, `rpn_class`, `mrcnn_detection`, ...).
    Built on first use, so that importing mrcnn.model does not import TensorFlow."""
    if _NETWORK_CLASS:
        return _NETWORK_CLASS[0]
    import keras

    from casting.model import MaskRCNN as Network

    @keras.saving.register_keras_serializable(package="mrcnn")
    class InspectableNetwork(Network):
        __doc__ = network_class.__doc__

        def get_layer(self, name=None, index=None):
            if index is not None or name is None:
                return super().get_layer(name=name, index=index)
            try:
                return super().get_layer(name=name)
            except ValueError:
                return layer_output(self, name)

    _NETWORK_CLASS.append(InspectableNetwork)
    return InspectableNetwork


def layer_output(network, name) -> LayerOutput:
    named = network.named_layers()
    key = _graph.ALIASES.get(name, name)
    if key in _graph.KEYS:
        return LayerOutput(name, key, named.get(name))
    backbone = {layer.name: layer for layer in network.backbone_fpn.layers}
    if name in backbone:
        return LayerOutput(name, name, backbone[name])
    if name in named:
        return LayerOutput(name, None, named[name])
    hint = ""
    if name.startswith("res4") and name.endswith("_out"):
        hint = (f" The last block of stage 4 of this {network.config.backbone} is "
                f"{_graph.stage_aliases(network.config.backbone)['C4']!r} (run_graph key 'C4').")
    raise ValueError(f"no layer or output named {name!r}.{hint} run_graph keys: "
                     f"{sorted(_graph.KEYS)}, or any backbone/FPN layer name")


class InspectMixin:
    """The inspection half of `mrcnn.model.MaskRCNN` (needs .config, .keras_model, .mode)."""

    # ---- inputs and outputs ------------------------------------------------------------
    def mold_inputs(self, images):
        """RGB images of any size -> (molded_images float32 [N, S, S, 3] (resized into the
        model's square, padded bottom/right, MEAN_PIXEL subtracted), image_metas [N,
        IMAGE_META_SIZE] (`compose_image_meta`), windows int32 [N, 4] (the image area))."""
        import tensorflow as tf

        from casting.model.transform import resize_and_pad_tf, resized_shape, to_rgb
        from mrcnn.data import compose_image_meta, mold_image

        side = int(self.config.IMAGE_SHAPE[0])
        molded, metas, windows = [], [], []
        for image in images:
            image = to_rgb(image)
            padded, scale = resize_and_pad_tf(tf.convert_to_tensor(image), side)
            new_h, new_w, _ = resized_shape(image.shape[0], image.shape[1], side)
            window = (0, 0, new_h, new_w)
            molded.append(mold_image(padded.numpy(), self.config))
            metas.append(compose_image_meta(0, image.shape, (side, side, 3), window,
                                            float(scale.numpy()),
                                            np.zeros([self.config.NUM_CLASSES], np.int32)))
            windows.append(window)
        return np.stack(molded), np.stack(metas), np.array(windows, np.int32)

    def unmold_detections(self, detections, mrcnn_mask, original_image_shape, image_shape,
                          window):
        """One image's detections [D, (y1, x1, y2, x2, class_id, score)] (normalised, zero
        padded) and masks [D, m, m, NUM_CLASSES] (or [D, m, m], already per class) -> (boxes
        int32 [N, 4] in original pixels, class_ids [N], scores [N], masks bool [H, W, N])."""
        from casting.model.transform import paste_masks

        detections = np.asarray(detections, np.float64)
        n = int(np.sum(detections[:, 4] > 0))
        class_ids = detections[:n, 4].astype(np.int32)
        masks = np.asarray(mrcnn_mask)[:n]
        if masks.ndim == 4:
            masks = masks[np.arange(n), :, :, class_ids]
        boxes = _boxes.denorm_boxes_float(detections[:n, :4], image_shape)
        boxes -= np.array([window[0], window[1], window[0], window[1]], np.float64)
        height, width = (int(v) for v in original_image_shape[:2])
        scale = max(image_shape[:2]) / max(height, width)  # the model's resize geometry
        boxes = np.clip(boxes / scale, 0, [height, width, height, width]).astype(np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, class_ids, masks = boxes[keep], class_ids[keep], masks[keep]
        scores = detections[:n, 5][keep].astype(np.float32)
        full = paste_masks(np.asarray(masks, np.float32), boxes, height, width)
        return (np.round(boxes).astype(np.int32), class_ids, scores,
                np.transpose(full, (1, 2, 0)) if len(full) else np.zeros((height, width, 0), bool))

    def detect_molded(self, molded_images, image_metas, verbose=0):
        """Detections for images already molded (`mold_inputs`, or `mold_image` of
        `load_image_gt`'s images): one dict per image as `detect`, in the pixels of each
        meta's original image shape."""
        assert self.mode == "inference", "Create model in inference mode."
        import tensorflow as tf

        from mrcnn.data import parse_image_meta

        molded_images = np.asarray(molded_images, np.float32)
        meta = parse_image_meta(np.asarray(image_metas, np.float64))
        shapes = meta["original_image_shape"]
        info = np.stack([shapes[:, 0], shapes[:, 1], np.asarray(image_metas)[:, 11],
                         np.zeros(len(shapes))], axis=1).astype(np.float32)
        if verbose:
            from mrcnn.model import log

            log(f"Processing {len(molded_images)} images")
            log("molded_images", molded_images)
            log("image_metas", image_metas)
        images = molded_images + np.asarray(self.config.MEAN_PIXEL, np.float32)
        fn = self.keras_model.inference_function()
        out = fn(tf.constant(images), tf.constant(info),
                 tf.constant(self.casting_config.detection_min_confidence, tf.float32))
        out = {k: v.numpy() for k, v in out.items()}
        from mrcnn.model import _matterport_result

        results = []
        for i in range(len(images)):
            h, w = int(shapes[i, 0]), int(shapes[i, 1])
            det = self.keras_model._to_image_detections(out, i, h, w, float(info[i, 2]))
            results.append(_matterport_result(det, h, w))
        return results

    # ---- anchors -----------------------------------------------------------------------
    def get_anchors(self, image_shape):
        """The anchors of an input of `image_shape`, normalised [A, 4]; `self.anchors` keeps
        them in pixels (the inspection notebooks read it)."""
        key = tuple(int(v) for v in image_shape[:2])
        cache = self.__dict__.setdefault("_anchor_cache", {})
        if key not in cache:
            shapes = _graph.compute_backbone_shapes(self.config, key)
            cache[key] = _boxes.generate_pyramid_anchors(
                self.config.RPN_ANCHOR_SCALES, self.config.RPN_ANCHOR_RATIOS, shapes,
                self.config.BACKBONE_STRIDES, self.config.RPN_ANCHOR_STRIDE)
        self._anchors = cache[key]
        return _boxes.norm_boxes(self._anchors, key)

    @property
    def anchors(self):
        """Pixel anchors of the last `get_anchors` call (default: the model's input)."""
        if getattr(self, "_anchors", None) is None:
            self.get_anchors(self.config.IMAGE_SHAPE)
        return self._anchors

    @anchors.setter
    def anchors(self, value):
        self._anchors = value

    # ---- layers ------------------------------------------------------------------------
    def get_trainable_layers(self):
        """Every layer with weights, under its matterport name (trainable now or not)."""
        return list(self.keras_model.named_layers().values())

    def find_trainable_layer(self, layer):
        """The layer holding the weights of `layer` (a layer or its name). matterport
        unwrapped TimeDistributed here; this model has no wrappers."""
        if isinstance(layer, str):
            return self.keras_model.named_layers()[layer]
        return getattr(layer, "layer", None) or layer

    def ancestor(self, tensor, name, checked=None):
        """matterport searched the TF1 graph for a tensor by name. Keras 3 runs eagerly and
        has no such graph: the ProposalLayer tensors the notebooks looked for are run_graph
        keys, returned here; any other name is an error saying what to use."""
        base = str(name).split(":")[0].split("/")[-1]
        for key in ("pre_nms_anchors", "refined_anchors_clipped", "refined_anchors"):
            if base == key:
                return OutputKey(key)
        if "non_max_suppression" in base:
            return OutputKey("post_nms_anchor_ix")
        raise NotImplementedError(
            f"ancestor({name!r}): Keras 3 models have no TF1 graph to search. Ask run_graph "
            f"for a key instead: {sorted(_graph.KEYS)}, or a backbone/FPN layer name")

    # ---- run_graph ---------------------------------------------------------------------
    def run_graph(self, images, outputs, image_metas=None, gt_class_ids=None, gt_boxes=None,
                  gt_masks=None, seed=None):
        """Run the model once on `images` and return an OrderedDict {name: array} for
        `outputs`, a list of (name, key): key a run_graph key (`mrcnn._graph.KEYS`), a
        backbone/FPN layer name, `keras_model.get_layer(name).output` or
        `model.ancestor(...)`. The training-target keys (rois, target_*, rpn_match,
        rpn_target_bbox) need the ground truth of each image in model pixels, as
        `load_image_gt` returns it: gt_class_ids [N], gt_boxes [N, 4], gt_masks [S, S, N]."""
        from mrcnn.model import log

        names, keys = [], []
        for name, ref in outputs:
            key = ref.output if isinstance(ref, LayerOutput) else ref
            if not isinstance(key, str):
                raise TypeError(
                    f"run_graph output {name!r}: expected a key string or "
                    f"keras_model.get_layer(...).output, not {type(ref).__name__} (Keras 3 "
                    "has no graph tensors to evaluate; wrappers such as tf.identity(...) "
                    "are not needed)")
            names.append(name)
            keys.append(self._resolve_key(str(key)))
        molded, metas, _ = self.mold_inputs(images)
        if image_metas is not None:
            metas = np.asarray(image_metas)
        info = np.stack([metas[:, 1], metas[:, 2], metas[:, 11], np.zeros(len(metas))], 1)
        gt = None
        if any(k in _graph.GT_KEYS for k in keys):
            gt = self._pack_gt(images, gt_class_ids, gt_boxes, gt_masks)
        raw = molded + np.asarray(self.config.MEAN_PIXEL, np.float32)
        values = _graph.forward(self.keras_model, raw, info.astype(np.float32), keys, gt,
                                _graph._seed(seed))
        result = collections.OrderedDict()
        for name, key in zip(names, keys):
            result[name] = values[key]
            log(name, result[name])
        return result

    def _resolve_key(self, key):
        key = _graph.ALIASES.get(key, key)
        if key in _graph.KEYS or key in _graph.stage_aliases(self.config.BACKBONE):
            return key
        layer_output(self.keras_model, key).output  # raises with the list of keys
        return key

    def _pack_gt(self, images, class_ids, boxes, masks):
        if class_ids is None or boxes is None or masks is None:
            raise ValueError("the training-target keys need gt_class_ids, gt_boxes and "
                             "gt_masks (one entry per image, as load_image_gt returns)")
        if isinstance(class_ids, np.ndarray) and class_ids.ndim == 1:
            class_ids, boxes, masks = [class_ids], [boxes], [masks]
        side = int(self.config.IMAGE_SHAPE[0])
        for image in images:
            if np.asarray(image).shape[:2] != (side, side):
                raise ValueError(
                    f"with ground truth, pass the model-size images ({side} x {side}) that "
                    "load_image_gt returns, so that boxes and masks are in their pixels")
        n = max(1, max(len(c) for c in class_ids))
        ids = np.zeros((len(images), n), np.int32)
        bxs = np.zeros((len(images), n, 4), np.float32)
        msk = np.zeros((len(images), n, side, side), np.uint8)
        for i, (c, b, m) in enumerate(zip(class_ids, boxes, masks)):
            k = len(c)
            ids[i, :k] = c
            bxs[i, :k] = np.asarray(b, np.float32).reshape(-1, 4)
            msk[i, :k] = np.transpose(np.asarray(m).astype(np.uint8), (2, 0, 1))
        return ids, bxs, msk
