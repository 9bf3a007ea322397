"""Pydantic mirror of a profile's `gen` section (the generation track).

The generation track has its own data (the tokenizer sees the images at their own size, e.g.
Fashion-MNIST 28x28 resized to 32x32, cached apart from the classification cache), a VQGAN
tokenizer, a small classifier whose features replace Inception offline, a DiT recipe shared by
every latent patch size, and the sampling / evaluation settings. Its run specs are in
gen_specs.py.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pixbench.config.schema import (Bool, DataConfig, Float, Int, OptimConfig, SafeName, Seed,
                                    Strict)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Pretrained(Strict):
    """A model loaded instead of trained. root `instruments`: a fixed upstream model committed
    with the project (instruments/<profile>/, `pixbench instruments freeze`), the same bytes on
    every machine kind, so the cells that use it differ between machines only by their own
    kernels (issue 23: a tokenizer and a FeatNet retrained per machine reordered the DiT cells)."""

    path: str = Field(description="Relative to `root`'s folder unless absolute.")
    root: Literal["data", "instruments"] = Field(description="data: PIXBENCH_DATA_ROOT; "
                                                 "instruments: PIXBENCH_INSTRUMENTS_DIR "
                                                 "(default instruments/, committed).")
    sha256: Sha256 | None = Field(description="sha256 of the weights file, checked at every "
                                  "load (required for root instruments), or null.")

    @model_validator(mode="after")
    def _pinned(self) -> "Pretrained":
        if self.root == "instruments" and self.sha256 is None:
            raise ValueError("sha256: required for a committed instrument (root: instruments)")
        return self


class PretrainedTokenizer(Pretrained):
    path: str = Field(description="A diffusers-format VQModel folder (config.json + weights) "
                      "or a taming/LDM VQGAN checkpoint (.ckpt/.pt), relative to `root`'s "
                      "folder unless absolute.")
    format: Literal["diffusers", "taming"] = Field(description="Layout of `path`.")


class VQConfig(Strict):
    """A VQGAN (Esser et al. 2021): diffusers' VQModel encoder/decoder/quantiser, dead-code
    restarts, hinge PatchGAN loss after a warm-up with taming's adaptive weight."""

    pretrained: PretrainedTokenizer | None = Field(description="Load this tokenizer instead "
                                                   "of training one, or null.")
    downsample: Int = Field(description="Spatial down-sampling factor f (a power of 2): "
                            "latents are (image_size / f)^2.")
    base_channels: Int = Field(gt=0, description="Encoder width at full resolution; doubles "
                               "at each down-sampling.")
    layers_per_block: Int = Field(ge=1, description="ResNet blocks per resolution.")
    mid_attention: Bool = Field(description="Self-attention in the bottleneck.")
    latent_channels: Int = Field(gt=0, description="Latent channels (= code dimension).")
    codebook_size: Int = Field(ge=2, description="Number of codes.")
    commitment: Float = Field(ge=0, description="β of the commitment loss "
                              "(van den Oord et al. 2017).")
    dead_code_steps: Int = Field(ge=0, description="Re-seed a code from a random encoder "
                                 "output when unused for this many steps (0: never).")
    disc_start_step: Int = Field(ge=0, description="Add the PatchGAN loss from this step.")
    disc_weight: Float = Field(ge=0, description="Scale of taming's adaptive adversarial "
                               "weight (0: no GAN).")
    disc_channels: Int = Field(gt=0, description="PatchGAN width.")
    disc_layers: Int = Field(ge=1, description="Strided PatchGAN layers.")
    steps: Int = Field(gt=0, description="Training steps.")
    batch_size: Int = Field(gt=0, description="Training batch size.")
    lr: Float = Field(gt=0, description="Adam learning rate (generator and discriminator).")
    betas: tuple[Float, Float] = Field(description="Adam betas (taming: 0.5, 0.9).")
    eval_images: Int = Field(gt=0, description="Validation images for PSNR / L1 / codes.")
    checkpoint_every_s: Float = Field(gt=0, description="Checkpoint interval (seconds).")

    @field_validator("downsample")
    @classmethod
    def _power_of_2(cls, value: int) -> int:
        if value < 1 or value & (value - 1):
            raise ValueError(f"downsample={value} is not a power of 2")
        return value

    @property
    def levels(self) -> int:
        return int(math.log2(self.downsample)) + 1


class FeatNetConfig(Strict):
    width: Int = Field(gt=0, description="CNN width of the first stage.")
    feature_dim: Int = Field(gt=0, description="Penultimate features (FID/KID/PRC space).")
    epochs: Int = Field(gt=0, description="Training epochs.")
    batch_size: Int = Field(gt=0, description="Training batch size.")
    lr: Float = Field(gt=0, description="AdamW peak learning rate (cosine).")
    train_subset: Int | None = Field(gt=0, description="Class-balanced training subset, or "
                                     "null for all.")
    pretrained: Pretrained | None = Field(description="A featnet.pt (`pixbench featnet train` "
                                          "format) used instead of training one, or null.")


class DitConfig(Strict):
    """DiT training (Peebles & Xie 2023): epsilon prediction, linear betas, EMA weights."""

    pos_embed: Literal["learn", "sincos"] = Field(description="learn: the paper's pixel model "
                                                  "(PiT); sincos: DiT's fixed 2D embedding.")
    class_dropout: Float = Field(ge=0, lt=1, description="Label dropout for classifier-free "
                                 "guidance.")
    num_train_timesteps: Int = Field(gt=0, description="Diffusion steps T.")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        description="diffusers beta schedule (DiT: linear 1e-4..0.02).")
    steps: Int = Field(gt=0, description="Training steps.")
    batch_size: Int = Field(gt=0, description="Training batch size.")
    optim: OptimConfig = Field(description="AdamW and its warm-up + cosine schedule (DiT: "
                               "constant 1e-4, no decay: min_lr_ratio 1, warmup 0).")
    ema_decay: Float = Field(ge=0, lt=1, description="EMA of the weights; samples use it.")
    curve_every_steps: Int | None = Field(gt=0, description="Also measure FID (on "
                                          "curve_samples samples) every this many steps, or "
                                          "null for none.")
    curve_samples: Int = Field(gt=1, description="Samples per FID-vs-step point.")
    precision: Literal["auto", "fp32", "bf16"] = Field(description="As classify.")
    checkpoint_every_s: Float = Field(gt=0, description="Checkpoint interval (seconds).")


class SampleConfig(Strict):
    sampler: Literal["ddim", "ddpm"] = Field(description="diffusers scheduler.")
    steps: Int = Field(gt=0, description="Denoising steps.")
    eta: Float = Field(ge=0, le=1, description="DDIM η (0: deterministic given the noise).")
    cfg_scale: Float = Field(ge=1, description="Classifier-free guidance scale (1: none).")
    num_samples: Int = Field(gt=1, description="Samples for the metrics (classes balanced).")
    batch_size: Int = Field(gt=0, description="Sampling batch size.")


class FidConfig(Strict):
    reference: Literal["train", "val"] = Field(description="Real split the samples are "
                                               "compared with.")
    reference_images: Int | None = Field(gt=1, description="Real images for the reference "
                                         "statistics (class-balanced), or null for all.")
    kid_subset_size: Int = Field(gt=1, description="KID subset size (≤ samples).")
    prc_neighborhood: Int = Field(gt=0, description="k of precision/recall (Kynkäänniemi "
                                  "et al. 2019).")
    inception: Bool = Field(description="Also report Inception-v3 metrics when its weights "
                            "are on this machine (PIXBENCH_INCEPTION_WEIGHTS).")


class LatentsConfig(Strict):
    train_subset: Int | None = Field(gt=0, description="Training images encoded for the DiT "
                                     "(class-balanced subset), or null for all.")
    val_subset: Int | None = Field(gt=0, description="Validation images encoded, or null for "
                                   "all.")


class GenConfig(Strict):
    data: DataConfig = Field(description="Images the tokenizer sees (own cache).")
    vq: VQConfig = Field(description="The image tokenizer.")
    latents: LatentsConfig = Field(description="Which images are encoded to cached latents.")
    featnet: FeatNetConfig = Field(description="The classifier whose features score samples.")
    dit: DitConfig = Field(description="The DiT recipe, shared by every latent patch size.")
    sample: SampleConfig = Field(description="Sampling for the metrics.")
    fid: FidConfig = Field(description="FID / IS / KID / precision-recall settings.")


class GenSweep(Strict):
    sizes: list[SafeName] = Field(min_length=1, description="DiT size keys (xxs, xs, s, b, l, xl).")
    patches: list[Int] = Field(min_length=1, description="Latent patch sizes (1 = pixel "
                               "tokens, the paper's PiT).")
    seeds: list[Seed] = Field(min_length=1, description="Seeds of the DiT runs.")
    tokenizer_seed: Seed = Field(description="Seed of the one tokenizer all DiT runs share.")


def latent_side(gen: GenConfig) -> int:
    return gen.data.image_size // gen.vq.downsample


def gen_problems(gen: GenConfig, sweep: GenSweep | None, where: str) -> list[str]:
    """Cross-field problems of a profile's gen section, every one (not just the first)."""
    out = []
    if gen.data.image_size % gen.vq.downsample:
        out.append(f"{where}.vq.downsample={gen.vq.downsample} does not divide "
                   f"{where}.data.image_size={gen.data.image_size}")
    if sweep is not None:
        from pixbench.models.sizes import DIT_SIZES

        unknown = [z for z in sweep.sizes if z not in DIT_SIZES]
        if unknown:
            out.append(f"gen_sweep.sizes {unknown} are not DiT sizes ({', '.join(DIT_SIZES)})")
    side = latent_side(gen)
    bad = [p for p in (sweep.patches if sweep else []) if p < 1 or side % p]
    if bad:
        out.append(f"gen_sweep.patches {bad} do not divide the {side}x{side} latent grid "
                   f"({where})")
    s = gen.sample
    if s.sampler == "ddim" and gen.dit.num_train_timesteps % s.steps:
        out.append(f"{where}.sample.steps={s.steps} does not divide "
                   f"{where}.dit.num_train_timesteps={gen.dit.num_train_timesteps} (DDIM)")
    if gen.fid.kid_subset_size > gen.sample.num_samples:
        out.append(f"{where}.fid.kid_subset_size={gen.fid.kid_subset_size} exceeds "
                   f"{where}.sample.num_samples={gen.sample.num_samples}")
    return out

