"""Every benchmark workload, registered: import `WORKLOADS` and `build` from here.

The registry itself (`Prepared`, `register`, `attention_context`) is registry.py; the builders
are workloads_vit.py (`vit_train`, `vit_infer`, `data_loading`) and workloads_gen.py
(`mae_encoder`, `dit_train`, `dit_infer`, `tokenizer_encode`, `fid_features`). Importing them
here registers them; neither imports the other or this module, so there is no import cycle.
"""

from __future__ import annotations

from benchsuite import workloads_vit  # noqa: F401  (registers the classification workloads)
from benchsuite import workloads_gen  # noqa: F401  (then pre-training and generation's)
from benchsuite.registry import (WORKLOADS, Builder, Prepared,  # noqa: F401  (re-exported)
                                     attention_context, register)

__all__ = ["WORKLOADS", "Builder", "Prepared", "attention_context", "build", "register"]


def build(workload: str, device: str, params: dict) -> Prepared:
    if workload not in WORKLOADS:
        raise KeyError(f"workload {workload!r} is not registered; known: {', '.join(WORKLOADS)}")
    return WORKLOADS[workload](device=device, **params)
