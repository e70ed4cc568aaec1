"""matterport's Mask_RCNN API (`mrcnn`) on this project's Keras 3 / TensorFlow 2 model.

A script written for matterport runs with its imports pointing here:

    from mrcnn.config import Config
    from mrcnn import model as modellib, utils, visualize

See docs/matterport.md for what is the same and what changed.
"""

__version__ = "2.1+casting"

__all__ = ["config", "model", "parallel_model", "utils", "visualize"]
