"""Pydantic mirror of params.yaml (extra="forbid"), PIXBENCH_* machine paths, and RunSpec.

params.yaml is the only home of hyper-parameters. Its top-level `profile` is the one switch
between the CPU default and the paper recipes; `sweep` lists the cells of the DVC matrix.
Environment variables hold machine paths only; CLI flags pick a run and where it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pixbench.errors import UserError
from pixbench.genconfig import GenConfig, GenSweep, check_gen
from pixbench.schema import DataConfig, Digestible, OptimConfig, Strict  # noqa: F401 (re-exported)


# ------------------------------------------------------------------------------ classification


class AugmentConfig(Strict):
    hflip: bool = Field(description="Random horizontal flips.")
    crop_padding: int = Field(0, ge=0, description="Random translation: pad by this many "
                              "pixels (reflect) and crop back.")
    rrc_scale_min: float | None = Field(None, gt=0, le=1, description="RandomResizedCrop "
                                        "minimum area scale, or null for none.")
    color_jitter: float = Field(0.0, ge=0, le=1, description="Brightness, contrast and "
                                "saturation jitter strength (MoCo v3 uses 0.4; no hue jitter).")
    grayscale_p: float = Field(0.0, ge=0, le=1, description="Probability of converting an "
                               "RGB image to grayscale.")


class PermutationConfig(Strict):
    kind: Literal["none", "shuffle", "local"] = Field("none", description="A fixed pixel "
                                                      "permutation for train and val alike: "
                                                      "none, a full shuffle, or local swaps.")
    swaps: int = Field(0, ge=0, description="local: number of swaps T (the paper's 25K on "
                       "224x224 ImageNet).")
    distance: int = Field(1, ge=1, description="local: max Chebyshev distance δ of a swap.")
    seed: int = Field(0, description="Seed of the permutation (fixed across runs and seeds).")


class ClassifyConfig(Strict):
    pool: Literal["avg", "cls"] = Field("avg", description="Global average pooling or a "
                                        "class token.")
    drop_path: float = Field(0.0, ge=0, lt=1, description="Stochastic depth rate.")
    pos_embed: Literal["learn", "sincos", "none"] = Field("learn", description="Position "
                                                          "embeddings: learned from random init "
                                                          "(the paper's), fixed 2D sin-cos, or "
                                                          "none.")
    permutation: PermutationConfig = Field(PermutationConfig(), description="Fixed pixel "
                                           "permutation applied where tokens are made.")
    train_subset: int | None = Field(None, gt=0, description="Use this many training images "
                                     "(a fixed, class-balanced subset), or null for all.")
    val_subset: int | None = Field(None, gt=0, description="Evaluate on this many validation "
                                   "images (fixed subset), or null for all.")
    epochs: int = Field(gt=0, description="Training epochs over the (subset of the) train split.")
    batch_size: int = Field(gt=0, description="Global training batch size.")
    eval_batch_size: int = Field(256, gt=0, description="Evaluation batch size.")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Cross-entropy label smoothing.")
    optim: OptimConfig = Field(description="AdamW and its warm-up + cosine schedule.")
    augment: AugmentConfig = Field(description="Training augmentation (per dataset).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 "
                                                       "autocast on CUDA, and on CPU only from "
                                                       "width 192 where it measured 1.5-1.9x.")
    checkpoint_every_s: float = Field(60.0, gt=0, description="Write the checkpoint at least "
                                      "this often (seconds) and at every epoch end.")
    curve_every_steps: int | None = Field(None, gt=0, description="Also evaluate the "
                                          "learning curve (1000 fixed val images) every this "
                                          "many steps, besides every epoch end.")
    throughput_steps: int = Field(5, ge=1, description="Timed steps for the train/inference "
                                  "img/s and peak-memory measurement.")


class PretrainConfig(Strict):
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="Share of tokens removed (MAE: "
                              "75%).")
    target: Literal["pix", "norm_pix"] = Field(description="Reconstruction target: pixels, or "
                                                "MAE's per-patch normalised pixels (degenerate "
                                                "at p=1: see models/mae.py).")
    train_subset: int | None = Field(None, gt=0, description="Pre-training images (fixed "
                                     "class-balanced subset; labels unused), or null for all.")
    epochs: int = Field(gt=0, description="Pre-training epochs.")
    batch_size: int = Field(gt=0, description="Global pre-training batch size.")
    optim: OptimConfig = Field(description="AdamW and its warm-up + cosine schedule.")
    augment: AugmentConfig = Field(description="Pre-training augmentation.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="As classify.")
    checkpoint_every_s: float = Field(60.0, gt=0, description="Checkpoint interval (seconds).")
    throughput_steps: int = Field(5, ge=1, description="Timed steps for img/s and memory.")


class MaeConfig(Strict):
    pretrain: PretrainConfig = Field(description="Masked-autoencoder pre-training.")
    finetune: ClassifyConfig = Field(description="Full fine-tuning from the pre-trained "
                                     "encoder; the from-scratch baseline trains with this same "
                                     "recipe (equal fine-tune budget).")
    linprobe: ClassifyConfig = Field(description="Linear probe: frozen encoder, trained "
                                     "classifier head.")


class Profile(Strict):
    data: DataConfig = Field(description="Where the images come from and their stored size.")
    classify: ClassifyConfig = Field(description="The classification recipe, shared by "
                                     "every patch size.")
    mae: MaeConfig = Field(description="The MAE track's recipes, shared by every patch size.")
    gen: GenConfig | None = Field(None, description="The generation track (tokenizer, FID "
                                  "classifier, DiT, sampling, metrics), or null for none.")


class Sweep(Strict):
    sizes: list[str] = Field(min_length=1, description="Model size keys of the DVC matrix "
                             "(xxs, xs, m, t, s, b, l); the first is `--size`'s default.")
    patches: list[int] = Field(min_length=1, description="Patch sizes of the DVC matrix "
                               "(1 = pixel tokens).")
    seeds: list[int] = Field(min_length=1, description="Seeds of the DVC matrix.")


class Variant(Strict):
    pos_embed: Literal["learn", "sincos", "none"] | None = Field(None, description="Override "
                                                                "of classify.pos_embed.")
    permutation: PermutationConfig | None = Field(None, description="Override of "
                                                  "classify.permutation.")


class Locality(Strict):
    variants: dict[str, Variant] = Field(description="Named locality ablations: overrides of "
                                         "the classify recipe; nothing else changes.")
    run: list[str] = Field(description="Variants the DVC locality matrix runs (x sweep sizes "
                           "x sweep patches x locality seeds).")
    seeds: list[int] = Field(min_length=1, description="Seeds of the locality matrix.")


class MaeSweep(Sweep):
    alt_target: Literal["pix", "norm_pix"] | None = Field(None, description="A second "
                                                          "reconstruction target to compare, "
                                                          "run on alt_patches.")
    alt_patches: list[int] = Field(default_factory=list, description="Patch sizes for "
                                   "alt_target (norm_pix is undefined at p=1 on gray data).")


class Params(Strict):
    profile: str = Field(description="The active profile: the one switch between the CPU "
                         "default and the paper recipes.")
    sweep: Sweep = Field(description="Cells of the DVC matrix (sizes x patch sizes x seeds).")
    mae_sweep: MaeSweep = Field(description="Cells of the MAE track's DVC matrices.")
    profiles: dict[str, Profile] = Field(description="Named data + recipe presets.")
    locality: Locality = Field(description="Locality ablations (pixel permutation, position "
                               "embeddings).")
    gen_sweep: GenSweep | None = Field(None, description="Cells of the generation track's DVC "
                                       "matrices (DiT sizes x latent patch sizes x seeds).")

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of profiles: "
                             f"{', '.join(self.profiles)}")
        from pixbench.models.vit import SIZES

        unknown = [s for s in self.sweep.sizes if s not in SIZES]
        if unknown:
            raise ValueError(f"sweep.sizes {unknown} are not known sizes ({', '.join(SIZES)})")
        size = self.profiles[self.profile].data.image_size
        missing = [v for v in self.locality.run if v not in self.locality.variants]
        if missing:
            raise ValueError(f"locality.run {missing} are not in locality.variants")
        for name, sw in (("sweep", self.sweep), ("mae_sweep", self.mae_sweep)):
            bad = [p for p in sw.patches if p < 1 or size % p]
            if bad:
                raise ValueError(f"{name}.patches {bad} do not divide profiles.{self.profile}"
                                 f".data.image_size={size}")
        one = [p for p in self.mae_sweep.patches if size // p < 2]
        if one:
            raise ValueError(f"mae_sweep.patches {one} leave a single token: nothing to mask")
        gen = self.profiles[self.profile].gen
        if gen is not None:
            check_gen(gen, self.gen_sweep, f"profiles.{self.profile}.gen")
        return self

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]


def _format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {loc or '<root>'}: {msg}{more}"


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; any problem is one UserError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML") from None
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, str(path))) from None


# ---------------------------------------------------------------------------- machine paths


class Paths(BaseSettings):
    """Machine paths only (PIXBENCH_*); hyper-parameters never come from the environment."""

    model_config = SettingsConfigDict(env_prefix="PIXBENCH_", extra="ignore")

    data_root: Path | None = Field(None, description="Raw datasets (CIFAR, ImageNet, IDX files).")
    cache_dir: Path = Field(Path("data"), description="Prepared uint8 caches, one per profile.")
    runs_dir: Path = Field(Path("runs"), description="Run directories.")
    reports_dir: Path = Field(Path("reports"), description="Reports and figures.")
    logs_dir: Path = Field(Path("logs"), description="Launcher logs (submitit folders).")

    def cache_for(self, profile: str) -> Path:
        return self.cache_dir / profile

    def gen_cache_for(self, profile: str) -> Path:
        return self.cache_dir / f"{profile}-gen"

    def run_dir(self, profile: str, run_id: str) -> Path:
        return self.runs_dir / profile / run_id


# ---------------------------------------------------------------------------------- run spec


Task = Literal["classify", "mae-scratch", "mae-finetune", "mae-linprobe"]


class RunSpec(Digestible):
    """Everything that determines a classification run's result (from scratch, or initialised
    from an MAE encoder); its hash guards resume and reuse."""

    task: Task = "classify"
    profile: str
    size: str
    patch: int
    seed: int
    variant: str | None = None
    data: DataConfig
    classify: ClassifyConfig
    init: dict | None = Field(None, description="Pre-trained encoder: {run_id, digest} of the "
                              "MAE pre-training run it loads.")

    @property
    def run_id(self) -> str:
        base = f"{self.task}-{self.size}-p{self.patch}-s{self.seed}"
        return f"{base}-{self.variant}" if self.variant else base



def make_classify_spec(params: Params, *, size: str | None, patch: int, seed: int,
                       variant: str | None = None) -> RunSpec:
    from pixbench.models.vit import SIZES

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


def spec_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two canonical specs."""
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


class PretrainSpec(Digestible):
    """Everything that determines an MAE pre-training run's result."""

    task: Literal["mae-pretrain"] = "mae-pretrain"
    profile: str
    size: str
    patch: int
    seed: int
    variant: str | None = None  # the target, when not the profile's
    data: DataConfig
    pretrain: PretrainConfig

    @property
    def run_id(self) -> str:
        base = f"{self.task}-{self.size}-p{self.patch}-s{self.seed}"
        return f"{base}-{self.variant}" if self.variant else base



def make_pretrain_spec(params: Params, *, size: str | None, patch: int, seed: int,
                       target: str | None = None) -> PretrainSpec:
    """target: another reconstruction target than the profile's (run id suffix -TARGET)."""
    size = size or params.mae_sweep.sizes[0]
    base = make_classify_spec(params, size=size, patch=patch, seed=seed)  # validates size/patch
    if params.active.data.image_size // patch < 2:
        raise UserError(f"--patch {patch} leaves a single token: nothing to mask")
    pre = params.active.mae.pretrain
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
