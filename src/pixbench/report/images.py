"""Image grids for the report: the PNG writer (`tile`, `save_grid`) lives in pixbench.eval.images,
where tasks (`dit sample`) use it without importing the report package; `interleave` lays out
reconstruction figures."""

from __future__ import annotations

import numpy as np

from pixbench.eval.images import save_grid, tile  # noqa: F401  (re-exported for the report)


def interleave(original: np.ndarray, reconstruction: np.ndarray, ncol: int) -> np.ndarray:
    """Rows alternate originals and their reconstructions, `ncol` images per row."""
    rows = []
    for i in range(0, original.shape[0], ncol):
        rows += [original[i:i + ncol], reconstruction[i:i + ncol]]
    return np.concatenate(rows)
