"""Checkpoint helpers shared by the resume and fault tests."""

from __future__ import annotations

import torch


def tensors(obj):
    """Every tensor in a nested checkpoint, in a fixed order (dict keys sorted)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from tensors(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors(v)
