"""The classification and MAE recipes: pydantic mirror of their params.yaml parts (classify,
mae.pretrain, mae.finetune, mae.linprobe). Their run specs are in classify_specs.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pixbench.config.schema import Bool, Float, Int, OptimConfig, Seed, Strict, omit_when_null

Precision = Literal["auto", "fp32", "bf16"]


class AugmentConfig(Strict):
    hflip: Bool = Field(description="Random horizontal flips.")
    crop_padding: Int = Field(ge=0, description="Random translation: pad by this many pixels "
                              "(reflect) and crop back.")
    rrc_scale_min: Float | None = Field(gt=0, le=1, description="RandomResizedCrop minimum "
                                        "area scale, or null for none.")
    color_jitter: Float = Field(ge=0, le=1, description="Brightness, contrast and saturation "
                                "jitter strength (MoCo v3 uses 0.4; no hue jitter).")
    grayscale_p: Float = Field(ge=0, le=1, description="Probability of converting an RGB "
                               "image to grayscale.")


class PermutationConfig(Strict):
    kind: Literal["none", "shuffle", "local"] = Field(description="A fixed pixel permutation "
                                                      "for train and val alike: none, a full "
                                                      "shuffle, or local swaps.")
    swaps: Int = Field(ge=0, description="local: number of swaps T (the paper's 25K on "
                       "224x224 ImageNet).")
    distance: Int = Field(ge=1, description="local: max Chebyshev distance δ of a swap.")
    seed: Seed = Field(description="Seed of the permutation (fixed across runs and seeds).")


class ClassifyConfig(Strict):
    pool: Literal["avg", "cls"] = Field(description="Global average pooling or a class token.")
    drop_path: Float = Field(ge=0, lt=1, description="Stochastic depth rate.")
    pos_embed: Literal["learn", "sincos", "none"] = Field(description="Position embeddings: "
                                                          "learned from random init (the "
                                                          "paper's), fixed 2D sin-cos, or none.")
    permutation: PermutationConfig = Field(description="Fixed pixel permutation applied where "
                                           "tokens are made.")
    train_subset: Int | None = Field(gt=0, description="Use this many training images (a "
                                     "fixed, class-balanced subset), or null for all.")
    val_subset: Int | None = Field(gt=0, description="Evaluate on this many validation images "
                                   "(fixed subset), or null for all.")
    epochs: Int = Field(gt=0, description="Training epochs over the (subset of the) train split.")
    # Why a floor in steps: the recipe is written in epochs, so a smaller dataset gets fewer
    # optimiser steps. At the CPU recipe the pixel model (p=1) leaves its loss plateau only
    # after ~300-400 steps (params.yaml, fmnist-cpu's comment; reports/bench/recipe-search.md):
    # fmnist-cpu's 2 epochs of 20k images are 624 steps, the same recipe on 4k images 124, and
    # p=1 never left the plateau. Null (the default) keeps the recipe's epochs and the digest.
    min_steps: Int | None = omit_when_null(
        gt=0, description="Train at least this many optimizer steps: on a small dataset the "
                          "epochs grow to ceil(min_steps / steps_per_epoch), steps_per_epoch = "
                          "train images // batch_size (never fewer than `epochs`; warm-up stays "
                          "warmup_epochs, the cosine spans all steps). Null: `epochs` as "
                          "written.")
    batch_size: Int = Field(gt=0, description="Global training batch size.")
    eval_batch_size: Int = Field(gt=0, description="Evaluation batch size.")
    label_smoothing: Float = Field(ge=0, lt=1, description="Cross-entropy label smoothing.")
    optim: OptimConfig = Field(description="AdamW and its warm-up + cosine schedule.")
    augment: AugmentConfig = Field(description="Training augmentation (per dataset).")
    precision: Precision = Field(description="auto: bf16 autocast on CUDA, and on CPU only "
                                 "from width 192 where it measured 1.5-1.9x.")
    checkpoint_every_s: Float = Field(gt=0, description="Write the checkpoint at least this "
                                      "often (seconds) and at every epoch end.")
    curve_every_steps: Int | None = Field(gt=0, description="Also evaluate the learning curve "
                                          "(1000 fixed val images) every this many steps, "
                                          "besides every epoch end; null: epoch ends only.")
    throughput_steps: Int = Field(ge=1, description="Timed steps for the train/inference img/s "
                                  "and peak-memory measurement.")


def visible_tokens(tokens: int, mask_ratio: float) -> int:
    """Tokens MAE leaves visible: models/mae.py's rounding, int(tokens * (1 - mask_ratio)); at
    least one must be, checked when params are read (config/params.py)."""
    return int(tokens * (1 - mask_ratio))


class PretrainConfig(Strict):
    mask_ratio: Float = Field(gt=0, lt=1, description="Share of tokens removed (MAE: 75%).")
    target: Literal["pix", "norm_pix"] = Field(description="Reconstruction target: pixels, or "
                                                "MAE's per-patch normalised pixels (degenerate "
                                                "at p=1: see models/mae.py).")
    train_subset: Int | None = Field(gt=0, description="Pre-training images (fixed "
                                     "class-balanced subset; labels unused), or null for all.")
    epochs: Int = Field(gt=0, description="Pre-training epochs.")
    batch_size: Int = Field(gt=0, description="Global pre-training batch size.")
    optim: OptimConfig = Field(description="AdamW and its warm-up + cosine schedule.")
    augment: AugmentConfig = Field(description="Pre-training augmentation.")
    precision: Precision = Field(description="As classify.")
    checkpoint_every_s: Float = Field(gt=0, description="Checkpoint interval (seconds).")
    throughput_steps: Int = Field(ge=1, description="Timed steps for img/s and memory.")


class MaeConfig(Strict):
    pretrain: PretrainConfig = Field(description="Masked-autoencoder pre-training.")
    finetune: ClassifyConfig = Field(description="Full fine-tuning from the pre-trained "
                                     "encoder; the from-scratch baseline trains with this same "
                                     "recipe (equal fine-tune budget).")
    linprobe: ClassifyConfig = Field(description="Linear probe: frozen encoder, trained "
                                     "classifier head.")
