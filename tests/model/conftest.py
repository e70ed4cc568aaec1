import os
import sys

# the model tests share small helpers (tests/model/shapes.py)
sys.path.insert(0, os.path.dirname(__file__))
