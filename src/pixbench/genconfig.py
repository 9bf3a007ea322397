"""Pydantic mirror of a profile's `gen` section (the generation track) and its run specs.

The generation track has its own data (the tokenizer sees the images at their own size, e.g.
Fashion-MNIST 28x28 resized to 32x32, cached apart from the classification cache), a VQGAN
tokenizer, a small classifier whose features replace Inception offline, a DiT recipe shared by
every latent patch size, and the sampling / evaluation settings.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from pixbench.schema import DataConfig, Digestible, OptimConfig, Strict


class PretrainedTokenizer(Strict):
    path: str = Field(description="A diffusers-format VQModel folder (config.json + weights) "
                      "or a taming/LDM VQGAN checkpoint (.ckpt/.pt), relative to "
                      "PIXBENCH_DATA_ROOT unless absolute.")
    format: Literal["diffusers", "taming"] = Field(description="Layout of `path`.")


class VQConfig(Strict):
    """A VQGAN (Esser et al. 2021): diffusers' VQModel encoder/decoder/quantiser, dead-code
    restarts, hinge PatchGAN loss after a warm-up with taming's adaptive weight."""

    pretrained: PretrainedTokenizer | None = Field(None, description="Load this tokenizer "
                                                   "instead of training one.")
    downsample: int = Field(4, description="Spatial down-sampling factor f (a power of 2): "
                            "latents are (image_size / f)^2.")
    base_channels: int = Field(16, gt=0, description="Encoder width at full resolution; "
                               "doubles at each down-sampling.")
    layers_per_block: int = Field(1, ge=1, description="ResNet blocks per resolution.")
    mid_attention: bool = Field(True, description="Self-attention in the bottleneck.")
    latent_channels: int = Field(4, gt=0, description="Latent channels (= code dimension).")
    codebook_size: int = Field(256, ge=2, description="Number of codes.")
    commitment: float = Field(0.25, ge=0, description="β of the commitment loss "
                              "(van den Oord et al. 2017).")
    dead_code_steps: int = Field(50, ge=0, description="Re-seed a code from a random encoder "
                                 "output when unused for this many steps (0: never).")
    disc_start_step: int = Field(200, ge=0, description="Add the PatchGAN loss from this step.")
    disc_weight: float = Field(0.5, ge=0, description="Scale of taming's adaptive "
                               "adversarial weight (0: no GAN).")
    disc_channels: int = Field(32, gt=0, description="PatchGAN width.")
    disc_layers: int = Field(2, ge=1, description="Strided PatchGAN layers.")
    steps: int = Field(gt=0, description="Training steps.")
    batch_size: int = Field(gt=0, description="Training batch size.")
    lr: float = Field(gt=0, description="Adam learning rate (generator and discriminator).")
    betas: tuple[float, float] = Field((0.5, 0.9), description="Adam betas (taming: 0.5, 0.9).")
    eval_images: int = Field(2000, gt=0, description="Validation images for PSNR / L1 / codes.")
    checkpoint_every_s: float = Field(30.0, gt=0, description="Checkpoint interval (seconds).")

    @model_validator(mode="after")
    def _check(self) -> VQConfig:
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample={self.downsample} is not a power of 2")
        return self

    @property
    def levels(self) -> int:
        return int(math.log2(self.downsample)) + 1


class FeatNetConfig(Strict):
    width: int = Field(32, gt=0, description="CNN width of the first stage.")
    feature_dim: int = Field(128, gt=0, description="Penultimate features (FID/KID/PRC space).")
    epochs: int = Field(gt=0, description="Training epochs.")
    batch_size: int = Field(gt=0, description="Training batch size.")
    lr: float = Field(gt=0, description="AdamW peak learning rate (cosine).")
    train_subset: int | None = Field(None, gt=0, description="Class-balanced training subset, "
                                     "or null for all.")


class DitConfig(Strict):
    """DiT training (Peebles & Xie 2023): epsilon prediction, linear betas, EMA weights."""

    pos_embed: Literal["learn", "sincos"] = Field(description="learn: the paper's pixel model "
                                                  "(PiT); sincos: DiT's fixed 2D embedding.")
    class_dropout: float = Field(0.1, ge=0, lt=1, description="Label dropout for "
                                 "classifier-free guidance.")
    num_train_timesteps: int = Field(1000, gt=0, description="Diffusion steps T.")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        "linear", description="diffusers beta schedule (DiT: linear 1e-4..0.02).")
    steps: int = Field(gt=0, description="Training steps.")
    batch_size: int = Field(gt=0, description="Training batch size.")
    optim: OptimConfig = Field(description="AdamW and its warm-up + cosine schedule (DiT: "
                               "constant 1e-4, no decay: min_lr_ratio 1, warmup 0).")
    ema_decay: float = Field(0.9999, ge=0, lt=1, description="EMA of the weights; samples use it.")
    curve_every_steps: int | None = Field(None, gt=0, description="Also measure FID (on "
                                          "curve_samples samples) every this many steps.")
    curve_samples: int = Field(256, gt=1, description="Samples per FID-vs-step point.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="As classify.")
    checkpoint_every_s: float = Field(60.0, gt=0, description="Checkpoint interval (seconds).")


class SampleConfig(Strict):
    sampler: Literal["ddim", "ddpm"] = Field("ddim", description="diffusers scheduler.")
    steps: int = Field(gt=0, description="Denoising steps.")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM η (0: deterministic given the noise).")
    cfg_scale: float = Field(ge=1, description="Classifier-free guidance scale (1: none).")
    num_samples: int = Field(gt=1, description="Samples for the metrics (classes balanced).")
    batch_size: int = Field(gt=0, description="Sampling batch size.")


class FidConfig(Strict):
    reference: Literal["train", "val"] = Field("train", description="Real split the samples "
                                               "are compared with.")
    reference_images: int | None = Field(None, gt=1, description="Real images for the "
                                         "reference statistics (class-balanced), or all.")
    kid_subset_size: int = Field(500, gt=1, description="KID subset size (≤ samples).")
    prc_neighborhood: int = Field(3, gt=0, description="k of precision/recall (Kynkäänniemi "
                                  "et al. 2019).")
    inception: bool = Field(True, description="Also report Inception-v3 metrics when its "
                            "weights are on this machine (PIXBENCH_INCEPTION_WEIGHTS).")


class LatentsConfig(Strict):
    train_subset: int | None = Field(None, gt=0, description="Training images encoded for the "
                                     "DiT (class-balanced subset), or null for all.")
    val_subset: int | None = Field(None, gt=0, description="Validation images encoded, or null "
                                   "for all.")


class GenConfig(Strict):
    data: DataConfig = Field(description="Images the tokenizer sees (own cache).")
    vq: VQConfig = Field(description="The image tokenizer.")
    latents: LatentsConfig = Field(description="Which images are encoded to cached latents.")
    featnet: FeatNetConfig = Field(description="The classifier whose features score samples.")
    dit: DitConfig = Field(description="The DiT recipe, shared by every latent patch size.")
    sample: SampleConfig = Field(description="Sampling for the metrics.")
    fid: FidConfig = Field(description="FID / IS / KID / precision-recall settings.")


class GenSweep(Strict):
    sizes: list[str] = Field(min_length=1, description="DiT size keys (xxs, xs, s, b, l, xl).")
    patches: list[int] = Field(min_length=1, description="Latent patch sizes (1 = pixel "
                               "tokens, the paper's PiT).")
    seeds: list[int] = Field(min_length=1, description="Seeds of the DiT runs.")
    tokenizer_seed: int = Field(0, description="Seed of the one tokenizer all DiT runs share.")


def latent_side(gen: GenConfig) -> int:
    return gen.data.image_size // gen.vq.downsample


def check_gen(gen: GenConfig, sweep: GenSweep | None, where: str) -> None:
    """Cross-field checks of a profile's gen section (ValueError: pydantic reports the field)."""
    if gen.data.image_size % gen.vq.downsample:
        raise ValueError(f"{where}.vq.downsample={gen.vq.downsample} does not divide "
                         f"{where}.data.image_size={gen.data.image_size}")
    side = latent_side(gen)
    if sweep is not None:
        bad = [p for p in sweep.patches if p < 1 or side % p]
        if bad:
            raise ValueError(f"gen_sweep.patches {bad} do not divide the {side}x{side} latent "
                             f"grid ({where})")
    s = gen.sample
    if s.sampler == "ddim" and gen.dit.num_train_timesteps % s.steps:
        raise ValueError(f"{where}.sample.steps={s.steps} does not divide "
                         f"{where}.dit.num_train_timesteps={gen.dit.num_train_timesteps} (DDIM)")
    if gen.fid.kid_subset_size > gen.sample.num_samples:
        raise ValueError(f"{where}.fid.kid_subset_size={gen.fid.kid_subset_size} exceeds "
                         f"{where}.sample.num_samples={gen.sample.num_samples}")


# ---------------------------------------------------------------------------------- run specs


class VQSpec(Digestible):
    """Everything that determines a tokenizer: its run id is `vq-s{seed}` (one per profile)."""

    task: Literal["vq"] = "vq"
    profile: str
    seed: int
    data: DataConfig
    vq: VQConfig

    @property
    def run_id(self) -> str:
        return f"vq-s{self.seed}"


class FeatNetSpec(Digestible):
    task: Literal["featnet"] = "featnet"
    profile: str
    seed: int
    data: DataConfig
    featnet: FeatNetConfig

    @property
    def run_id(self) -> str:
        return f"featnet-s{self.seed}"


class DitSpec(Digestible):
    """A DiT run on one tokenizer's latents; sampling and metrics settings are not part of
    the training digest (they are recorded with each evaluation)."""

    task: Literal["dit"] = "dit"
    profile: str
    size: str
    patch: int
    seed: int
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer whose latents it "
                            "learns.")
    dit: DitConfig
    # only with dit.curve_every_steps: the FID-vs-step probe's classifier, sampler and reference
    featnet: dict | None = None
    sample: SampleConfig | None = None
    fid: FidConfig | None = None

    @property
    def run_id(self) -> str:
        return f"dit-{self.size}-p{self.patch}-s{self.seed}"


class EncodeSpec(Digestible):
    """Cached latents of one tokenizer: run id `{tokenizer run id}-latents`."""

    task: Literal["vq-encode"] = "vq-encode"
    profile: str
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer.")
    data: DataConfig
    latents: LatentsConfig

    @property
    def run_id(self) -> str:
        return f"{self.tokenizer['run_id']}-latents"


class VQEvalSpec(Digestible):
    """Reconstruction metrics of one tokenizer on the validation split (rFID on FeatNet)."""

    task: Literal["vq-eval"] = "vq-eval"
    profile: str
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer.")
    featnet: dict = Field(description="{run_id, digest} of the FID classifier.")
    eval_images: int
    sanity_samples: int = Field(description="Images per side of the sanity FIDs (real val, "
                                "noise), as many as the DiT samples so the bias is the same.")
    fid: FidConfig

    @property
    def run_id(self) -> str:
        return f"{self.tokenizer['run_id']}-eval"


class DitEvalSpec(Digestible):
    """Sampling + FID/IS/KID/PR of one DiT run."""

    task: Literal["dit-eval"] = "dit-eval"
    profile: str
    dit: dict = Field(description="{run_id, digest} of the DiT run.")
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer that decodes.")
    featnet: dict = Field(description="{run_id, digest} of the FID classifier.")
    seed: int
    sample: SampleConfig
    fid: FidConfig

    @property
    def run_id(self) -> str:
        return f"{self.dit['run_id']}-eval"


# --------------------------------------------------------------------------- spec factories


def _gen(params) -> GenConfig:
    from pixbench.errors import UserError

    gen = params.active.gen
    if gen is None:
        raise UserError(f"params.yaml: profiles.{params.profile}.gen is not set (no generation "
                        "track in this profile)")
    return gen


def _ref(spec: Digestible) -> dict:
    return {"run_id": spec.run_id, "digest": spec.digest()}


def make_vq_spec(params, seed: int | None = None) -> VQSpec:
    gen = _gen(params)
    seed = params.gen_sweep.tokenizer_seed if seed is None and params.gen_sweep else (seed or 0)
    return VQSpec(profile=params.profile, seed=seed, data=gen.data, vq=gen.vq)


def make_encode_spec(params) -> EncodeSpec:
    gen = _gen(params)
    return EncodeSpec(profile=params.profile, tokenizer=_ref(make_vq_spec(params)),
                      data=gen.data, latents=gen.latents)


def make_featnet_spec(params, seed: int = 0) -> FeatNetSpec:
    gen = _gen(params)
    return FeatNetSpec(profile=params.profile, seed=seed, data=gen.data, featnet=gen.featnet)


def make_vq_eval_spec(params) -> VQEvalSpec:
    gen = _gen(params)
    return VQEvalSpec(profile=params.profile, tokenizer=_ref(make_vq_spec(params)),
                      featnet=_ref(make_featnet_spec(params)), eval_images=gen.vq.eval_images,
                      sanity_samples=gen.sample.num_samples, fid=gen.fid)


def make_dit_spec(params, *, size: str | None, patch: int, seed: int) -> DitSpec:
    from pixbench.errors import UserError
    from pixbench.models.dit import DIT_SIZES

    gen = _gen(params)
    size = size or (params.gen_sweep.sizes[0] if params.gen_sweep else "xxs")
    if size not in DIT_SIZES:
        raise UserError(f"--size {size!r} is not a DiT size ({', '.join(DIT_SIZES)})")
    side = latent_side(gen)
    if patch < 1 or side % patch:
        raise UserError(f"--patch {patch} does not divide the {side}x{side} latent grid")
    probe = {}
    if gen.dit.curve_every_steps:
        probe = {"featnet": _ref(make_featnet_spec(params)), "sample": gen.sample, "fid": gen.fid}
    return DitSpec(profile=params.profile, size=size, patch=patch, seed=seed,
                   tokenizer=_ref(make_vq_spec(params)), dit=gen.dit, **probe)


def make_dit_eval_spec(params, *, size: str | None, patch: int, seed: int) -> DitEvalSpec:
    gen = _gen(params)
    dit = make_dit_spec(params, size=size, patch=patch, seed=seed)
    return DitEvalSpec(profile=params.profile, dit=_ref(dit), tokenizer=dit.tokenizer,
                       featnet=_ref(make_featnet_spec(params)), seed=seed, sample=gen.sample,
                       fid=gen.fid)
