"""Mask R-CNN - Train on Shapes Dataset, written the way matterport's samples/shapes is.

Only the import lines would change from a matterport script (here they are already the
ones a matterport user writes: the `mrcnn` package of this project answers them). Sizes are
small so the script trains on a CPU; the environment variables SHAPES_* make it shorter for
the test-suite (defaults are the full run whose results the README reports).

Writes detections of the training images to $SHAPES_OUT/detections.json and a
display_instances() PNG to $SHAPES_OUT/shapes_detections.png.
"""

import json
import math
import os
import random
import sys
import tempfile

import numpy as np
from skimage.draw import disk, polygon

# Root directory of the project
ROOT_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.append(ROOT_DIR)  # To find local version of the library

from mrcnn.config import Config  # noqa: E402
from mrcnn import utils  # noqa: E402
import mrcnn.model as modellib  # noqa: E402
from mrcnn import visualize  # noqa: E402
from mrcnn.model import log  # noqa: E402

OUT_DIR = os.environ.get("SHAPES_OUT", os.path.join(tempfile.gettempdir(), "mrcnn_shapes"))
# Directory to save logs and trained model
MODEL_DIR = os.path.join(OUT_DIR, "logs")
HEADS_EPOCHS = int(os.environ.get("SHAPES_HEADS_EPOCHS", 1))
ALL_EPOCHS = int(os.environ.get("SHAPES_ALL_EPOCHS", 6))
FINE_EPOCHS = int(os.environ.get("SHAPES_FINE_EPOCHS", 7))
STEPS = int(os.environ.get("SHAPES_STEPS", 50))
NUM_TRAIN = int(os.environ.get("SHAPES_NUM_TRAIN", 6))


class ShapesConfig(Config):
    """Configuration for training on the toy shapes dataset.
    Derives from the base Config class and overrides values specific
    to the toy shapes dataset.
    """
    # Give the configuration a recognizable name
    NAME = "shapes"

    # Train on 1 GPU and 2 images per GPU.
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2

    # Number of classes (including background)
    NUM_CLASSES = 1 + 3  # background + 3 shapes

    # Use small images for faster training.
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    BACKBONE = "resnet50"

    # A slimmer network than matterport's (CPU-sized): narrower FPN and heads.
    # RPN_CONV_CHANNELS is not a matterport name: UPPER_CASE names of our own config
    # fields pass through.
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 256
    RPN_CONV_CHANNELS = 64

    # Use smaller anchors because our image and objects are small
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)  # anchor side in pixels

    # Reduce training ROIs per image because the images are small and have
    # few objects. Aim to allow ROI sampling to pick 33% positive ROIs.
    TRAIN_ROIS_PER_IMAGE = 32
    ROI_POSITIVE_RATIO = 0.5
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 200
    POST_NMS_ROIS_INFERENCE = 100
    MAX_GT_INSTANCES = 4
    DETECTION_MAX_INSTANCES = 10

    STEPS_PER_EPOCH = STEPS
    VALIDATION_STEPS = 1
    LEARNING_RATE = float(os.environ.get("SHAPES_LR", 0.01))


config = ShapesConfig()
config.display()


class ShapesDataset(utils.Dataset):
    """Generates the shapes synthetic dataset. The dataset consists of simple
    shapes (triangles, squares, circles) placed randomly on a blank surface.
    The images are generated on the fly. No file access required.
    """

    def load_shapes(self, count, height, width):
        """Generate the requested number of synthetic images.
        count: number of images to generate.
        height, width: the size of the generated images.
        """
        # Add classes
        self.add_class("shapes", 1, "square")
        self.add_class("shapes", 2, "circle")
        self.add_class("shapes", 3, "triangle")

        # Add images
        for i in range(count):
            bg_color, shapes = self.random_image(height, width)
            self.add_image("shapes", image_id=i, path=None,
                           width=width, height=height,
                           bg_color=bg_color, shapes=shapes)

    def load_image(self, image_id):
        """Generate an image from the specs of the given image ID."""
        info = self.image_info[image_id]
        bg_color = np.array(info['bg_color']).reshape([1, 1, 3])
        image = np.ones([info['height'], info['width'], 3], dtype=np.uint8)
        image = image * bg_color.astype(np.uint8)
        for shape, color, dims in info['shapes']:
            image = self.draw_shape(image, shape, dims, color)
        return image

    def image_reference(self, image_id):
        """Return the shapes data of the image."""
        info = self.image_info[image_id]
        if info["source"] == "shapes":
            return info["shapes"]
        else:
            super(self.__class__).image_reference(self, image_id)

    def load_mask(self, image_id):
        """Generate instance masks for shapes of the given image ID."""
        info = self.image_info[image_id]
        shapes = info['shapes']
        count = len(shapes)
        mask = np.zeros([info['height'], info['width'], count], dtype=np.uint8)
        for i, (shape, _, dims) in enumerate(info['shapes']):
            mask[:, :, i:i + 1] = self.draw_shape(mask[:, :, i:i + 1].copy(), shape, dims, 1)
        # Handle occlusions
        occlusion = np.logical_not(mask[:, :, -1]).astype(np.uint8)
        for i in range(count - 2, -1, -1):
            mask[:, :, i] = mask[:, :, i] * occlusion
            occlusion = np.logical_and(occlusion, np.logical_not(mask[:, :, i]))
        # Map class names to class IDs.
        class_ids = np.array([self.class_names.index(s[0]) for s in shapes])
        return mask.astype(bool), class_ids.astype(np.int32)

    def draw_shape(self, image, shape, dims, color):
        """Draws a shape from the given specs."""
        # Get the center x, y and the size s
        x, y, s = dims
        h, w = image.shape[:2]
        if shape == 'square':
            image[max(y - s, 0):y + s, max(x - s, 0):x + s] = color
        elif shape == "circle":
            rr, cc = disk((y, x), s, shape=(h, w))
            image[rr, cc] = color
        elif shape == "triangle":
            rows = np.array([y - s, y + s / math.sin(math.radians(60)) / 2,
                             y + s / math.sin(math.radians(60)) / 2])
            cols = np.array([x, x - s, x + s])
            rr, cc = polygon(rows, cols, shape=(h, w))
            image[rr, cc] = color
        return image

    def random_shape(self, height, width):
        """Generates specifications of a random shape that lies within
        the given height and width boundaries.
        Returns a tuple of three values:
        * The shape name (square, circle, ...)
        * Shape color: a tuple of 3 values, RGB.
        * Shape dimensions: A tuple of values that define the shape size
                            and location. Differs per shape type.
        """
        # Shape
        shape = random.choice(["square", "circle", "triangle"])
        # Color: a bright tint per shape (random colours need far more training steps)
        tint = {"square": (0, 1, 2), "circle": (1, 2, 0), "triangle": (2, 0, 1)}[shape]
        color = [0, 0, 0]
        color[tint[0]] = random.randint(200, 255)
        color[tint[1]] = random.randint(100, 160)
        color[tint[2]] = random.randint(0, 60)
        color = tuple(color)
        # Center x, y
        buffer = 12
        y = random.randint(buffer, height - buffer - 1)
        x = random.randint(buffer, width - buffer - 1)
        # Size
        s = random.randint(7, height // 5)
        return shape, color, (x, y, s)

    def random_image(self, height, width):
        """Creates random specifications of an image with multiple shapes.
        Returns the background color of the image and a list of shape
        specifications that can be used to draw the image.
        """
        # Pick random (dark) background color
        bg_color = np.array([random.randint(0, 90) for _ in range(3)])
        # Generate a few random shapes and record their
        # bounding boxes
        shapes = []
        boxes = []
        N = random.randint(1, 2)
        for _ in range(N):
            shape, color, dims = self.random_shape(height, width)
            shapes.append((shape, color, dims))
            x, y, s = dims
            boxes.append([y - s, x - s, y + s, x + s])
        # Apply non-max suppression wit 0.3 threshold to avoid
        # shapes covering each other
        keep_ixs = utils.non_max_suppression(np.array(boxes), np.arange(N), 0.3)
        shapes = [s for i, s in enumerate(shapes) if i in keep_ixs]
        return bg_color, shapes


SEED = int(os.environ.get("SHAPES_SEED", 1))
random.seed(SEED)
np.random.seed(SEED)

# Training dataset
dataset_train = ShapesDataset()
dataset_train.load_shapes(NUM_TRAIN, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1])
dataset_train.prepare()

# Validation dataset
dataset_val = ShapesDataset()
dataset_val.load_shapes(4, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1])
dataset_val.prepare()

# Create model in training mode
model = modellib.MaskRCNN(mode="training", config=config, model_dir=MODEL_DIR)

# Which weights to start with? (no internet here: ImageNet/COCO files are optional)
init_with = os.environ.get("SHAPES_INIT", "none")  # imagenet, coco, last or none
if init_with == "imagenet":
    model.load_weights(model.get_imagenet_weights(), by_name=True)
elif init_with == "coco":
    COCO_MODEL_PATH = os.path.join(ROOT_DIR, "mask_rcnn_coco.h5")
    model.load_weights(COCO_MODEL_PATH, by_name=True,
                       exclude=["mrcnn_class_logits", "mrcnn_bbox_fc",
                                "mrcnn_bbox", "mrcnn_mask"])
elif init_with == "last":
    model.load_weights(model.find_last(), by_name=True)


def flip(image, masks):
    """A plain callable augmentation: horizontal flip of image and masks together."""
    if random.random() < 0.5:
        return image[:, ::-1], masks[:, ::-1]
    return image, masks


# Train the head branches
model.train(dataset_train, dataset_val,
            learning_rate=config.LEARNING_RATE,
            epochs=HEADS_EPOCHS,
            layers='heads')

# Fine tune all layers
model.train(dataset_train, dataset_val,
            learning_rate=config.LEARNING_RATE,
            epochs=ALL_EPOCHS,
            layers="all", augmentation=flip)

# Fine tune all layers with a lower learning rate
model.train(dataset_train, dataset_val,
            learning_rate=config.LEARNING_RATE / 10,
            epochs=FINE_EPOCHS,
            layers="all")


class InferenceConfig(ShapesConfig):
    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    DETECTION_MIN_CONFIDENCE = 0.5


inference_config = InferenceConfig()

# Recreate the model in inference mode
model = modellib.MaskRCNN(mode="inference", config=inference_config, model_dir=MODEL_DIR)

# Get path to saved weights
model_path = model.find_last()

# Load trained weights
print("Loading weights from ", model_path)
model.load_weights(model_path, by_name=True)

# Test on the training images
results = []
APs = []
for image_id in dataset_train.image_ids:
    image, image_meta, gt_class_id, gt_bbox, gt_mask = \
        modellib.load_image_gt(dataset_train, inference_config, image_id)
    r = model.detect([image], verbose=0)[0]
    AP, precisions, recalls, overlaps = utils.compute_ap(
        gt_bbox, gt_class_id, gt_mask, r["rois"], r["class_ids"], r["scores"], r["masks"])
    APs.append(AP)
    results.append({
        "image_id": int(image_id),
        "gt_boxes": gt_bbox.tolist(), "gt_class_ids": gt_class_id.tolist(),
        "rois": r["rois"].tolist(), "class_ids": r["class_ids"].tolist(),
        "scores": r["scores"].tolist(), "masks_shape": list(r["masks"].shape),
        "AP": AP,
    })
    if image_id == 0:
        log("original_image", image)
        log("gt_class_id", gt_class_id)
        log("gt_bbox", gt_bbox)
        log("gt_mask", gt_mask)
        visualize.display_instances(image, r['rois'], r['masks'], r['class_ids'],
                                    dataset_train.class_names, r['scores'], figsize=(8, 8))
        import matplotlib.pyplot as plt
        plt.savefig(os.path.join(OUT_DIR, "shapes_detections.png"))
        plt.close("all")

print("mAP: ", np.mean(APs))
with open(os.path.join(OUT_DIR, "detections.json"), "w") as fh:
    json.dump({"mAP": float(np.mean(APs)), "results": results,
               "class_names": dataset_train.class_names}, fh)
