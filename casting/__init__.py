"""Mask R-CNN for casting defects: configuration, data, model, training and serving."""
