"""Run specs of the classification and MAE tracks and the factories that build them from the
resolved params: a spec holds everything that determines a run's result, so its digest guards
resume and reuse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pixbench.config.classify import ClassifyConfig, PretrainConfig, visible_tokens
from pixbench.config.params import Params
from pixbench.config.schema import DataConfig, Digestible, Int, SafeName, Seed
from pixbench.errors import UserError

Task = Literal["classify", "mae-scratch", "mae-finetune", "mae-linprobe"]


class RunSpec(Digestible):
    """Everything that determines a classification run's result (from scratch, or initialised
    from an MAE encoder); its hash guards resume and reuse."""

    task: Task = "classify"
    profile: SafeName
    size: SafeName
    patch: Int
    seed: Seed
    variant: SafeName | None = None
    data: DataConfig
    classify: ClassifyConfig
    init: dict | None = Field(None, description="Pre-trained encoder: {run_id, digest} of the "
                              "MAE pre-training run it loads.")

    @property
    def run_id(self) -> str:
        base = f"{self.task}-{self.size}-p{self.patch}-s{self.seed}"
        return f"{base}-{self.variant}" if self.variant else base


class PretrainSpec(Digestible):
    """Everything that determines an MAE pre-training run's result."""

    task: Literal["mae-pretrain"] = "mae-pretrain"
    profile: SafeName
    size: SafeName
    patch: Int
    seed: Seed
    variant: SafeName | None = None  # the target, when not the profile's
    data: DataConfig
    pretrain: PretrainConfig

    @property
    def run_id(self) -> str:
        base = f"{self.task}-{self.size}-p{self.patch}-s{self.seed}"
        return f"{base}-{self.variant}" if self.variant else base


def make_classify_spec(params: Params, *, size: str | None, patch: int, seed: int,
                       variant: str | None = None) -> RunSpec:
    from pixbench.models.sizes import SIZES

    prof = params.active
    size = size or params.sweep.sizes[0]
    if size not in SIZES:
        raise UserError(f"--size {size!r} is not a known size ({', '.join(SIZES)})")
    if patch < 1 or prof.data.image_size % patch:
        raise UserError(f"--patch {patch} does not divide profiles.{params.profile}.data."
                        f"image_size={prof.data.image_size}")
    cls = prof.classify
    if variant is not None:
        if variant not in params.locality.variants:
            raise UserError(f"--variant {variant!r} is not one of locality.variants "
                            f"({', '.join(params.locality.variants)})")
        over = params.locality.variants[variant].model_dump(exclude_none=True)
        cls = ClassifyConfig.model_validate({**cls.model_dump(), **over})
    return RunSpec(profile=params.profile, size=size, patch=patch, seed=seed, variant=variant,
                   data=prof.data, classify=cls)


def make_pretrain_spec(params: Params, *, size: str | None, patch: int, seed: int,
                       target: str | None = None) -> PretrainSpec:
    """target: another reconstruction target than the profile's (run id suffix -TARGET)."""
    if params.active.mae is None or params.mae_sweep is None:
        raise UserError(f"profiles.{params.profile}.mae is not set: this profile has no MAE "
                        "track")
    size = size or params.mae_sweep.sizes[0]
    base = make_classify_spec(params, size=size, patch=patch, seed=seed)  # validates size/patch
    if params.active.data.image_size // patch < 2:
        raise UserError(f"--patch {patch} leaves a single token: nothing to mask")
    pre = params.active.mae.pretrain
    tokens = (params.active.data.image_size // patch) ** 2
    if visible_tokens(tokens, pre.mask_ratio) < 1:  # a --patch outside mae_sweep
        raise UserError(f"profiles.{params.profile}.mae.pretrain.mask_ratio={pre.mask_ratio:g} "
                        f"leaves no visible token of {tokens} at --patch {patch}")
    if target is not None and target not in ("pix", "norm_pix"):
        raise UserError(f"--target must be 'pix' or 'norm_pix', not {target!r}")
    variant = target if target is not None and target != pre.target else None
    if variant:
        pre = pre.model_copy(update={"target": target})
    return PretrainSpec(profile=params.profile, size=base.size, patch=patch, seed=seed,
                        variant=variant, data=params.active.data, pretrain=pre)


def make_mae_spec(params: Params, *, task: str, size: str | None, patch: int,
                  seed: int, target: str | None = None) -> RunSpec:
    """mae-finetune / mae-linprobe (initialised from the pre-training run of the same cell) and
    mae-scratch (the fine-tune recipe from random init: the equal-budget baseline)."""
    pre = make_pretrain_spec(params, size=size, patch=patch, seed=seed,
                             target=None if task == "mae-scratch" else target)
    mae = params.active.mae
    recipe = mae.linprobe if task == "mae-linprobe" else mae.finetune
    init = None if task == "mae-scratch" else {"run_id": pre.run_id, "digest": pre.digest()}
    return RunSpec(task=task, profile=params.profile, size=pre.size, patch=patch, seed=seed,
                   variant=None if task == "mae-scratch" else pre.variant,
                   data=params.active.data, classify=recipe, init=init)
