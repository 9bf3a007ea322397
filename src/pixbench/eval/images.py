"""Image grids (sample grids, reconstruction grids) as deterministic PNGs, pixel-exact: each
image is tiled at an integer zoom, nothing is resampled smoothly.

A pure image writer, kept out of pixbench.report so tasks (`dit sample`) can write a grid
without importing the report package."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from pixbench.runio import atomic_write_bytes


def tile(images: np.ndarray, ncol: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 (N, C, H, W) -> one (rows*(H+pad)+pad, ncol*(W+pad)+pad, C) canvas."""
    images = np.asarray(images)
    n, c, h, w = images.shape
    rows = -(-n // ncol)
    canvas = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y:y + h, x:x + w] = images[i].transpose(1, 2, 0)
    return canvas


def save_grid(images, out: Path, *, ncol: int, zoom: int = 2) -> Path:
    """Write a grid PNG (gray or RGB) atomically."""
    from PIL import Image

    arr = np.asarray(images.numpy() if hasattr(images, "numpy") else images)
    canvas = tile(arr, ncol)
    canvas = canvas.repeat(zoom, axis=0).repeat(zoom, axis=1)  # (zoom*H', zoom*W', C)
    img = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)
