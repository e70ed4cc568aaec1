"""matterport's `ParallelModel` (data-parallel training on several GPUs) mapped onto
`tf.distribute.MirroredStrategy`.

matterport split each batch across GPUs inside one TF1 graph and merged the outputs. Keras 3
does this with a distribution strategy, which must own the variables from the start: so
`ParallelModel(keras_model, gpu_count)` builds the same network again under a
`MirroredStrategy` over the first `gpu_count` GPUs, copies the weights into it and returns
it, with `.strategy` and `.inner_model` (the model it was made from). Compile and fit it
inside `model.strategy.scope()`; its `train_step` already sums the replicas' gradients.
`mrcnn.model.MaskRCNN.train` stays on one device; for training on several GPUs or
instances on SageMaker use `train.py` (docs/training.md).
"""

from __future__ import annotations


class ParallelModel:
    """`ParallelModel(keras_model, gpu_count)` -> the network, mirrored on `gpu_count` GPUs
    (`devices`: explicit device names instead, e.g. ["/cpu:0"] to try it without GPUs)."""

    def __new__(cls, keras_model, gpu_count, devices=None):
        import tensorflow as tf

        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            if len(gpus) < int(gpu_count):
                raise ValueError(
                    f"ParallelModel(gpu_count={gpu_count}): TensorFlow sees {len(gpus)} GPU(s). "
                    "Set GPU_COUNT to the GPUs this machine has (MaskRCNN.train runs on one "
                    "device with BATCH_SIZE = IMAGES_PER_GPU * GPU_COUNT), or train with "
                    "train.py, which uses tf.distribute across GPUs and instances")
            devices = [g.name for g in gpus[:int(gpu_count)]]
        if not hasattr(keras_model, "config") or not hasattr(keras_model, "named_layers"):
            raise TypeError("ParallelModel takes this project's network "
                            "(mrcnn.model.MaskRCNN(...).keras_model)")
        strategy = tf.distribute.MirroredStrategy(list(devices))
        with strategy.scope():
            model = type(keras_model)(keras_model.config)
        model.set_weights(keras_model.get_weights())
        # plain attributes: Keras would otherwise track the inner model as a sublayer
        object.__setattr__(model, "strategy", strategy)
        object.__setattr__(model, "inner_model", keras_model)
        return model
