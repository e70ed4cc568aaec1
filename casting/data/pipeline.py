"""tf.data input pipeline: records -> batch dicts for the model (docs/design.md "Batches").

Per image: read and decode the file (in-graph), turn it by its EXIF orientation as the
annotation saw it (casting.images), fetch its masks from the record (one small
`numpy_function`: masks are decoded from the annotation or RLE on demand), resize keeping
the aspect so the longer side is `config.image_size` (in training, times a scale drawn from
`config.train_scale_range`; with `config.train_native_scale` the image keeps its own pixel
size instead), augment (training), take a random `config.train_crop_size` square (training,
when set, when the scale jitters or at native scale; biased towards objects by
`config.train_crop_object_fraction`, instances cut below `config.train_crop_min_visible` of
their area dropped), zero-pad bottom/right to a square, recompute boxes from the masks, drop instances that vanished,
pad to `config.max_gt_instances`. Parallel map, batch, prefetch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from casting.data.augment import augment as _augment
from casting.data.augment import jittered_size, mask_boxes, random_crop
from casting.data.records import DatasetRecords
from casting.data.sampling import index_stream, repeat_factors
from casting.images import orient_tensor

log = logging.getLogger("casting.data")

# How many images had more instances than max_gt_instances (counted across pipelines).
truncation_stats = {"images": 0, "instances_dropped": 0}
_stats_lock = threading.Lock()


def resized_shape(height, width, size):
    """(new_h, new_w, scale) with scale = size / max(h, w); works on ints or tensors."""
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    scale = tf.cast(size, tf.float32) / tf.maximum(h, w)
    nh = tf.clip_by_value(tf.cast(tf.round(h * scale), tf.int32), 1, size)
    nw = tf.clip_by_value(tf.cast(tf.round(w * scale), tf.int32), 1, size)
    return nh, nw, scale


def _resize(image, nh, nw, method="bilinear"):
    """Antialiased bilinear for images; "area" (pixel coverage) for masks."""
    same = tf.logical_and(tf.equal(tf.shape(image)[0], nh), tf.equal(tf.shape(image)[1], nw))
    return tf.cond(
        same, lambda: image,
        lambda: tf.image.resize(image, tf.stack([nh, nw]), method=method,
                                antialias=method == "bilinear"))


def _pad(x, size):
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    return tf.pad(x, [[0, size - h], [0, size - w], [0, 0]])


def preprocess_image(image, size: int):
    """Resize an HxWx3 image keeping its aspect (longer side = size), pad bottom/right.

    Returns (float32 [size, size, 3], scale). NumPy in -> NumPy out (scale a float);
    tensors in -> tensors out. The training pipeline uses the same ops.
    """
    as_numpy = isinstance(image, np.ndarray)
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"expected an HxWxC image, got shape {image.shape}")
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    image = tf.cast(image, tf.float32)
    nh, nw, scale = resized_shape(tf.shape(image)[0], tf.shape(image)[1], size)
    out = _pad(_resize(image, nh, nw), size)
    out = tf.ensure_shape(out, [size, size, 3])
    if as_numpy:
        return out.numpy(), float(scale.numpy())
    return out, scale


def _boxes_from_masks(masks):
    """masks [S, S, K] bool -> boxes float32 [K, 4] (y1, x1, y2, x2 exclusive), areas [K]."""
    boxes = tf.cast(mask_boxes(masks), tf.float32)
    areas = tf.reduce_sum(tf.cast(masks, tf.int32), axis=[0, 1])
    return boxes, areas


def _instance_loader(ds: DatasetRecords, max_instances: int):
    records = ds.records

    def load(index):
        rec = records[int(index)]
        insts = [inst for inst in rec.instances if not inst.iscrowd]
        if len(insts) > max_instances:
            with _stats_lock:
                truncation_stats["images"] += 1
                truncation_stats["instances_dropped"] += len(insts) - max_instances
            log.warning("%s: %d instances, keeping the first %d (max_gt_instances)",
                        rec.image_path, len(insts), max_instances)
            insts = insts[:max_instances]
        # One extra all-zero channel so that K=0 images flow through the same ops.
        masks = np.zeros((rec.height, rec.width, len(insts) + 1), dtype=np.uint8)
        for k, inst in enumerate(insts):
            if inst.mask.shape != (rec.height, rec.width):
                raise ValueError(f"{rec.image_path}: mask shape {inst.mask.shape} differs "
                                 f"from the image size {(rec.height, rec.width)}")
            masks[..., k] = inst.mask
        class_ids = np.array([inst.class_id for inst in insts], dtype=np.int32)
        return masks, class_ids

    return load


def _repeat_factor_files(ds: DatasetRecords, mine: np.ndarray, paths: np.ndarray,
                         threshold: float, seed: int, repeat: bool) -> tf.data.Dataset:
    """(index, path) pairs of this pipeline's images `mine` drawn by repeat-factor sampling
    (casting.data.sampling): each pass holds an image about its repeat factor times,
    shuffled."""
    own = repeat_factors(ds, threshold)[mine]
    positions = tf.data.Dataset.from_generator(
        lambda: index_stream(own, seed, repeat), output_signature=tf.TensorSpec([], tf.int64))
    indices, names = tf.constant(mine, tf.int64), tf.constant(paths)
    return positions.map(lambda i: (tf.gather(indices, i), tf.gather(names, i)))


@dataclass(frozen=True)
class _Geometry:
    """Resize (longer side = image_size, times a jittered scale in training), augment, crop
    and pad one example; its random draws depend only on (seed, example counter)."""

    size: int  # config.image_size
    out_size: int  # the side of the square the model sees
    seed: int
    scale_range: tuple[float, float]
    jitter: bool
    augment: bool
    crop: bool
    native: bool = False  # keep the image's own pixel size (times the jitter), then crop
    object_fraction: float = 0.0
    min_visible: float = 0.0

    @classmethod
    def of(cls, config, training: bool, seed: int) -> "_Geometry":
        size, crop = int(config.image_size), int(config.train_crop_size)
        scale_range = tuple(float(v) for v in config.train_scale_range)
        jitter = bool(training and scale_range != (1.0, 1.0))
        native = bool(training and config.train_native_scale)
        return cls(size, crop if (training and crop) else size, seed, scale_range, jitter,
                   bool(training and config.augment), bool(training and (crop or jitter or native)),
                   native, float(config.train_crop_object_fraction),
                   float(config.train_crop_min_visible))

    def apply(self, image, masks, counter):
        """image uint8 [h, w, 3], masks uint8 [h, w, K+1] -> (float32 [S, S, 3], bool
        [S, S, K+1], resize scale), S = out_size."""
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        # scale jitter and crops draw from their own seeds, so the augmentation of a run
        # without them is unchanged
        target = tf.maximum(height, width) if self.native else self.size
        if self.jitter:
            target = jittered_size(target, self.scale_range,
                                   tf.stack([tf.constant(self.seed + 7919, tf.int64), counter]))
        nh, nw, scale = resized_shape(height, width, target)
        image = _resize(tf.cast(image, tf.float32), nh, nw)
        # a mask pixel is set where the instance covers at least half of it
        masks = _resize(tf.cast(masks, tf.float32), nh, nw, method="area")
        masks = tf.cast(masks >= 0.5, tf.float32)
        if self.augment:
            image, masks = _augment(image, masks,
                                    tf.stack([tf.constant(self.seed, tf.int64), counter]))
        if self.crop:
            image, masks = random_crop(
                image, masks, self.out_size,
                tf.stack([tf.constant(self.seed + 104729, tf.int64), counter]),
                self.object_fraction, self.min_visible)
        size = self.out_size
        image = tf.ensure_shape(_pad(image, size), [size, size, 3])
        return image, _pad(masks, size) > 0.5, scale


def _file_stream(ds: DatasetRecords, training: bool, input_context, repeat: bool, skip: int,
                 seed: int, threshold: float) -> tf.data.Dataset:
    """(example counter, (record index, image path)) for this input pipeline's share of the
    images: shuffled each pass when training (or drawn by repeat-factor sampling), repeated
    when asked, the first `skip` examples dropped."""
    paths = np.array([r.image_path for r in ds.records], dtype=object).astype(str)
    mine = np.arange(len(paths), dtype=np.int64)  # this input pipeline's images
    if input_context is not None and input_context.num_input_pipelines > 1:
        mine = mine[input_context.input_pipeline_id::input_context.num_input_pipelines]
    if training and threshold > 0:
        files = _repeat_factor_files(ds, mine, paths[mine], threshold, seed, repeat)
    else:
        files = tf.data.Dataset.from_tensor_slices((mine, paths[mine]))
        if training:
            files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            files = files.repeat()
    files = files.enumerate()  # example counter -> per-example augmentation seed
    return files.skip(int(skip)) if skip else files


def make_dataset(ds: DatasetRecords, config, training: bool, batch_size: int | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 repeat: bool | None = None, skip: int = 0) -> tf.data.Dataset:
    """A tf.data.Dataset of batch dicts (see docs/design.md "Batches").

    training=True: shuffled (seeded by config.seed), augmented when config.augment,
    repeated, incomplete final batch dropped; with config.repeat_threshold > 0 images of rare
    classes are repeated (casting.data.sampling). training=False: file order, no augmentation,
    no repeat, final partial batch kept. `repeat` overrides the repeat choice.
    `input_context` shards the file list per input pipeline before anything is decoded.
    `batch_size` (default config.batch_size) is the batch this pipeline yields.
    `skip` drops that many examples from the start of the stream before anything is read:
    a run resumed at global step s passes s x the images per step of this pipeline and sees
    the images, in the order and with the augmentation, of an uninterrupted run.
    """
    if not ds.records:
        raise ValueError("make_dataset: the dataset has no images")
    max_n = int(config.max_gt_instances)
    batch_size = int(batch_size or config.batch_size)
    repeat = training if repeat is None else repeat
    seed = int(config.seed)
    orientations = tf.constant([r.orientation for r in ds.records], tf.int32)
    if input_context is not None and input_context.num_input_pipelines > 1:
        seed += input_context.input_pipeline_id  # different shuffles per worker
    files = _file_stream(ds, training, input_context, repeat, skip, seed,
                         float(config.repeat_threshold))

    load_np = _instance_loader(ds, max_n)
    geometry = _Geometry.of(config, training, seed)
    out_size = geometry.out_size

    def load(counter, item):
        index, path = item
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = orient_tensor(image, tf.gather(orientations, index))  # as annotated
        masks, class_ids = tf.numpy_function(load_np, [index], [tf.uint8, tf.int32],
                                             stateful=False)
        masks = tf.ensure_shape(masks, [None, None, None])
        class_ids = tf.ensure_shape(class_ids, [None])
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        tf.debugging.assert_equal(
            tf.shape(masks)[:2], tf.shape(image)[:2],
            message=tf.strings.join(["image size differs from its annotation: ", path]))
        image, masks, scale = geometry.apply(image, masks, counter)
        masks = masks[..., :-1]  # drop the extra channel
        boxes, areas = _boxes_from_masks(masks)
        keep = tf.where(areas > 0)[:, 0]  # instances that vanished are dropped
        boxes = tf.gather(boxes, keep)
        class_ids = tf.gather(class_ids, keep)
        masks = tf.transpose(tf.gather(masks, keep, axis=2), [2, 0, 1])
        n = tf.shape(keep)[0]
        pad = max_n - n
        return {
            "image": image,
            "gt_boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_n, 4]),
            "gt_class_ids": tf.ensure_shape(tf.pad(class_ids, [[0, pad]]), [max_n]),
            "gt_masks": tf.ensure_shape(
                tf.pad(tf.cast(masks, tf.uint8), [[0, pad], [0, 0], [0, 0]]),
                [max_n, out_size, out_size]),
            "num_instances": n,
            "image_info": tf.stack([tf.cast(height, tf.float32), tf.cast(width, tf.float32),
                                    scale, 0.0]),
        }

    data = files.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    data = data.batch(batch_size, drop_remainder=bool(training),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
