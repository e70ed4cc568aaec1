# Mask R-CNN for casting defects: SageMaker training and hosting image.
#
#   GPU (default):  docker build -t casting-maskrcnn .
#   CPU smoke test: docker build --build-arg BASE_IMAGE=tensorflow/tensorflow:2.21.0 -t casting-maskrcnn:cpu .
#
# SageMaker runs `docker run IMAGE train` for training and `docker run IMAGE serve` for
# hosting; both are on PATH (/usr/local/bin). See docs/container.md.
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="casting-maskrcnn" \
      org.opencontainers.image.description="Mask R-CNN (ResNet50-FPN) for casting defects, SageMaker train/serve" \
      com.amazonaws.sagemaker.capabilities.accept-bind-to-port="true" \
      com.amazonaws.sagemaker.capabilities.multi-models="false"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    SAGEMAKER_PROGRAM=train.py

# The image's python must be 3.11. sagemaker-training is an sdist with a small C
# extension: it needs gcc and the headers of that same python (python3.11-dev).
# hadolint ignore=DL3008
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
 && PYDEV="python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev" \
 && apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev "${PYDEV}" \
 && rm -rf /var/lib/apt/lists/*

# Runtime dependencies only (tests, notebooks and the launch SDK stay out).
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && python3 -c 'import tensorflow as tf, keras; assert tf.__version__.startswith("2.21"), tf.__version__; print(tf.__version__, keras.__version__)'

# ImageNet ResNet50 weights, fetched now so network-isolated jobs can start from them
# (~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5).
RUN python3 -c 'import keras; keras.applications.ResNet50(weights="imagenet", include_top=False)' \
 && test -s /root/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

# Launchers: replace the toolkit's `train` console script (which does not forward
# SIGTERM) with one that execs the training program; `serve` execs serve.py.
COPY docker/train docker/serve /usr/local/bin/
RUN chmod 0755 /usr/local/bin/train /usr/local/bin/serve \
 && test "$(command -v train)" = /usr/local/bin/train \
 && test "$(command -v serve)" = /usr/local/bin/serve

# The code. No requirements.txt here: the toolkit would pip-install it at job start.
COPY casting/ /opt/ml/code/casting/
COPY train.py serve.py /opt/ml/code/
WORKDIR /opt/ml/code

EXPOSE 8080
