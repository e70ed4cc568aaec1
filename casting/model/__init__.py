"""Mask R-CNN (ResNet-FPN) in Keras 3: one module per concept, composed by `maskrcnn.py`."""

from casting.model.io import ModelDirError, load_model_dir, save_model_dir
from casting.model.maskrcnn import MaskRCNN

__all__ = ["MaskRCNN", "ModelDirError", "load_model_dir", "save_model_dir"]
