#!/usr/bin/env python3
"""Serve a trained casting Mask R-CNN model: the SageMaker hosting entry point.

In the image, `serve` (on PATH) execs this file with no arguments: it serves /opt/ml/model
on 0.0.0.0:${SAGEMAKER_BIND_TO_PORT:-8080} with gunicorn. Locally:

    python serve.py --model-dir output/model --port 8080

See docs/serving.md for the endpoint's request and response formats.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from casting.serving import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
