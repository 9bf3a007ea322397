"""Base models shared by every spec: strict (extra="forbid", frozen) models, the digest that
guards resume and reuse, and the config sections every track shares (data, optimiser).

Hyper-parameter fields have no defaults on purpose: a default the params file cannot show is a
hidden hyper-parameter, and DVC's stage `params:` cannot track it. Every value comes from
params.yaml (a recipe, or a profile's override of it). The one exception is an optional switch
added after runs were recorded (`omit_when_null`): its null is the behaviour from before it
existed, so it defaults to null and a null one is left out of every dump, digests included.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic import Strict as StrictType

from pixbench.names import name_problem

# Strict scalars: YAML `epochs: true`, `lr: "0.1"` or `batch_size: 2.5` are refused, not coerced
# (an int is still accepted where a float is meant). Outputs are unchanged, so are digests.
Int = Annotated[int, StrictType()]
Float = Annotated[float, StrictType()]
Bool = Annotated[bool, StrictType()]
# Seeds: 0 <= seed < 2**31. Every consumer takes that range (numpy's legacy seeding stops at
# 2**32, a C int at 2**31, torch.manual_seed overflows past 2**64 and wraps negatives), the
# derived per-step seeds stay exact, and the run id keeps the form `s<digits>`.
SEED_MAX = 2**31
Seed = Annotated[int, StrictType(), Field(ge=0, lt=SEED_MAX)]


# A spec field that becomes a path component (the rule: pixbench/names.py).
def _safe_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]

# The mark of a field that a dump leaves out while it is null (json_schema_extra, so the JSON
# schema and `model_fields` show it). Such a field came after runs were recorded: a spec that
# leaves it null must keep the digest it had before the field existed, or every finished run
# would turn stale although nothing about it changed. Setting it changes the digest.
OMIT_WHEN_NULL = {"digest": "omit-when-null"}


def _is_none(value) -> bool:
    return value is None


def omit_when_null(*, description: str, **constraints) -> Any:
    """A nullable field, null by default, left out of model_dump / model_dump_json (so of the
    canonical JSON and the digest, in whichever model it is nested) while it is null."""
    return Field(None, exclude_if=_is_none, json_schema_extra=dict(OMIT_WHEN_NULL),
                 description=description, **constraints)


def omitted_when_null(field) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("digest") == OMIT_WHEN_NULL["digest"]


class Strict(BaseModel):
    """extra="forbid", frozen, and no inf/nan where a number is expected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        """A field marked by hand must also be left out and default to null: else the mark
        promises an unchanged digest that the dump does not keep."""
        super().__pydantic_init_subclass__(**kwargs)
        for name, field in cls.model_fields.items():
            if omitted_when_null(field) and (field.default is not None
                                             or field.exclude_if is not _is_none):
                raise TypeError(f"{cls.__name__}.{name}: declare it with omit_when_null()")


class Digestible(Strict):
    """A spec whose canonical JSON hashes to the digest that guards resume, reuse and reports."""

    def canonical(self) -> dict:
        """The spec as JSON values; a null `omit_when_null` field, at any depth, is not in it."""
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
    image_size: Int = Field(ge=4, le=512, description="Square side the cache stores, after "
                            "antialiased resize (Fashion-MNIST, CIFAR) or centre crop + resize "
                            "(ImageFolder).")
    root: str | None = Field(description="ImageFolder root with train/ and val/, relative to "
                             "PIXBENCH_DATA_ROOT unless absolute; null for the other sources.")
    allow_download: Bool = Field(description="Download the source when it is missing locally "
                                 "and the network answers.")
    skip_corrupt: Bool = Field(description="ImageFolder: leave unreadable image files out "
                               "(listed under `skipped` in the cache manifest) instead of "
                               "refusing the tree.")
    channels: Literal["auto", 1, 3] = Field(
        description="Channels the cache stores. auto: 1 when every image of both splits is "
                    "gray (R = G = B in every pixel), else 3 (gray images replicated). 1: "
                    "colour is converted to luma (ITU-R 601-2, PIL's L); 3: gray is replicated.")
    fast_decode: Float | None = Field(
        ge=1, description="ImageFolder JPEGs: null decodes every pixel (exact). A number g lets "
                          "libjpeg decode at 1/2, 1/4 or 1/8 scale (PIL draft) while the short "
                          "side stays >= g * image_size, then crops and resizes as usual: "
                          "several times faster, pixels differ slightly "
                          "(reports/bench/scale-prepare.md).")


class OptimConfig(Strict):
    lr: Float = Field(gt=0, description="Peak learning rate for the reference batch size.")
    lr_ref_batch: Int = Field(gt=0, description="Batch size the peak lr refers to; the used lr "
                              "is lr * batch_size / lr_ref_batch (Goyal et al. 2017).")
    betas: tuple[Float, Float] = Field(description="AdamW betas.")
    weight_decay: Float = Field(ge=0, description="AdamW decoupled weight decay; not applied "
                                "to biases, norms and position embeddings.")
    warmup_epochs: Float = Field(ge=0, description="Linear warm-up length in epochs.")
    min_lr_ratio: Float = Field(ge=0, le=1, description="Cosine floor as a fraction of the "
                                "peak lr.")
    grad_clip: Float | None = Field(gt=0, description="Max global grad norm, or null.")
