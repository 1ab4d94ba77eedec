"""The image sizes every layer shares: the side of the built-in datasets' images (the default of
every model, run and record that names none) and the smallest side any model or folder may take."""

from __future__ import annotations

__all__ = ["IMAGE_SIZE", "MIN_IMAGE_SIZE"]

IMAGE_SIZE = 32  # the input side of the built-in datasets, and of every record that names none
MIN_IMAGE_SIZE = 8  # smaller images leave a network nothing to pool
