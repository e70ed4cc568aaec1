"""The SageMaker hosting endpoint: a Flask WSGI app served by gunicorn.

Routes
  GET  /ping                  200 once this worker's model is loaded (503 while loading)
  POST /invocations           image/jpeg | image/png | application/x-image |
                              application/octet-stream (raw bytes) or application/json
                              ({"image": "<base64>"} or {"instances": [...]});
                              Accept: application/json (default) or image/png (overlay)
  GET  /execution-parameters  batch transform settings

Each gunicorn worker (a ``gthread`` worker, so /ping answers while an inference runs) loads
the model once, before it accepts connections; a worker whose model fails to load exits with
gunicorn's boot-error code, which stops the server. Client errors come
back as JSON ``{"error": "...", "status": N}`` and never take a worker down.

Environment: SAGEMAKER_BIND_TO_PORT (8080), SAGEMAKER_MODEL_SERVER_WORKERS (1),
SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s), CASTING_SERVER_THREADS (32 per worker),
CASTING_MAX_IMAGE_PIXELS, CASTING_MAX_INSTANCES (16).
See docs/serving.md.
"""

from casting.serving.app import create_app
from casting.serving.holder import ModelHolder
from casting.serving.parsing import (
    CUSTOM_ATTRIBUTES_HEADER, JSON_TYPES, PARAMETER_NAMES, RAW_IMAGE_TYPES, RESPONSE_TYPES,
    ApiError,
)
from casting.serving.server import (
    DEFAULT_MODEL_DIR, DEFAULT_PORT, DEFAULT_THREADS, HOLDER_KEY, build_options, main,
    run_server,
)

__all__ = [
    "ApiError", "ModelHolder", "create_app", "build_options", "run_server", "main",
    "CUSTOM_ATTRIBUTES_HEADER", "JSON_TYPES", "PARAMETER_NAMES", "RAW_IMAGE_TYPES",
    "RESPONSE_TYPES", "DEFAULT_MODEL_DIR", "DEFAULT_PORT", "DEFAULT_THREADS", "HOLDER_KEY",
]
