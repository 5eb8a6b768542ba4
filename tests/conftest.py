"""Shared test settings: keep compilation cheap and fail on warnings from our own code."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Tests are imported by path (--import-mode=importlib, so that test files of the same name in
# different folders do not clash); the helper modules they share are found on sys.path.
_here = os.path.dirname(os.path.abspath(__file__))
for _folder in ("callbacks", os.path.join("nnx", "nn")):
    sys.path.insert(0, os.path.join(_here, _folder))
