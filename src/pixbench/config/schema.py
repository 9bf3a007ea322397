"""Base models shared by every spec: strict (extra="forbid", frozen) models, the digest that
guards resume and reuse, and the config sections every track shares (data, optimiser).

Hyper-parameter fields have no defaults on purpose: a default the params file cannot show is a
hidden hyper-parameter, and DVC's stage `params:` cannot track it. Every value comes from
params.yaml (a recipe, or a profile's override of it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Digestible(Strict):
    """A spec whose canonical JSON hashes to the digest that guards resume, reuse and reports."""

    def canonical(self) -> dict:
        return json.loads(self.model_dump_json())

    def digest(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def spec_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two canonical specs (why a run is stale)."""
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


class DataConfig(Strict):
    source: Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder"] = Field(
        description="Dataset source: the embedded Fashion-MNIST, CIFAR via torchvision, or an "
                    "ImageFolder tree (ImageNet or your own data).")
    image_size: int = Field(ge=4, le=512, description="Square side the cache stores, after "
                            "antialiased resize (Fashion-MNIST, CIFAR) or centre crop + resize "
                            "(ImageFolder).")
    root: str | None = Field(description="ImageFolder root with train/ and val/, relative to "
                             "PIXBENCH_DATA_ROOT unless absolute; null for the other sources.")
    allow_download: bool = Field(description="Download the source when it is missing locally "
                                 "and the network answers.")


class OptimConfig(Strict):
    lr: float = Field(gt=0, description="Peak learning rate for the reference batch size.")
    lr_ref_batch: int = Field(gt=0, description="Batch size the peak lr refers to; the used lr "
                              "is lr * batch_size / lr_ref_batch (Goyal et al. 2017).")
    betas: tuple[float, float] = Field(description="AdamW betas.")
    weight_decay: float = Field(ge=0, description="AdamW decoupled weight decay; not applied "
                                "to biases, norms and position embeddings.")
    warmup_epochs: float = Field(ge=0, description="Linear warm-up length in epochs.")
    min_lr_ratio: float = Field(ge=0, le=1, description="Cosine floor as a fraction of the "
                                "peak lr.")
    grad_clip: float | None = Field(gt=0, description="Max global grad norm, or null.")
