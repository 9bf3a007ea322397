"""The divergence guard's tests: host floats of the State, the float tensors of a state dict,
non-finite numbers in results."""

from __future__ import annotations

import math
from typing import Any

import torch


def finite_loss(state) -> bool:
    """The running loss and the newest window and curve rows (host floats already)."""
    values = [state.loss_sum, *(v for row in state.window[-1:] + state.history[-1:]
                                for v in row.values())]
    return all(math.isfinite(v) for v in values if isinstance(v, float))


def float_tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj.detach()
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from float_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from float_tensors(value)


def nonfinite(obj: Any, where: str = "") -> str | None:
    """The dotted path of the first non-finite float in nested dicts/lists, else None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "value")
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        bad = nonfinite(value, f"{where}.{key}" if where else str(key))
        if bad is not None:
            return bad
    return None
