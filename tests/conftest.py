"""Shared test settings: keep compilation cheap and fail on warnings from our own code."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
