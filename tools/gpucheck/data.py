"""The check's inputs: tiny learnable synthetic caches and a params.yaml that is the project's
recipes with one small profile of overrides.

The images are noise plus a bright horizontal band chosen by the label (flip-invariant, so the
recipes' augmentations keep labels valid), so a tiny model learns them in a few steps. The
params keep every value of `recipes:` in the project's params.yaml that the overrides below do
not name: precision stays the recipe's `auto` (bf16 autocast on CUDA), and so do the
augmentations, betas, attention in the VQ mid block and the rest. Only sizes, step counts and
the offline switches (no download, no Inception weights) change. tests/conftest.py builds its
fixtures from the same generator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

PROFILE = "gpucheck"
REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"  # tools/gpucheck/data.py


def synthetic_split(n: int, size: int, classes: int, seed: int, channels: int = 1):
    """uint8 (n, size, size, C): noise plus a bright horizontal band chosen by the label
    (flip-invariant, so the augmentations keep labels valid)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = rng.integers(0, 90, size=(n, size, size, channels), dtype=np.int64)
    h = size // classes
    for i, c in enumerate(labels):
        images[i, c * h:(c + 1) * h] += 60 + 45 * c  # brightness also tells: learnable fast
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)


def make_cache(cache_dir: Path, data_cfg: dict, n_train: int = 256, n_val: int = 64,
               classes: int = 4, channels: int = 1) -> dict:
    """A prepared cache (pixbench.data.cache format) whose manifest says it was made for
    `data_cfg`, so the tasks accept it as the profile's data."""
    from pixbench.data.cache import write_cache

    size = data_cfg["image_size"]
    splits = {"train": synthetic_split(n_train, size, classes, 1, channels),
              "val": synthetic_split(n_val, size, classes, 2, channels)}
    meta = {"source": data_cfg["source"], "spec": data_cfg}
    return write_cache(cache_dir, splits, [f"c{i}" for i in range(classes)], meta)


@dataclass(frozen=True)
class Form:
    """Sizes of one form of the check. `gpu`: 32x32 RGB, so classification at p=1 runs 1024
    pixel tokens through flash attention; `cpu`: seconds on two cores."""

    image: int  # classification / MAE image side
    gen_image: int  # generation track image side (latents: gen_image / 4)
    vit: str  # ViT size of classify / MAE
    dit: str  # DiT size
    n_train: int
    n_val: int
    batch: int
    gen_batch: int
    steps: int  # VQ and DiT optimiser steps
    width: int  # VQ / discriminator / FeatNet channels
    samples: int  # DiT samples scored, FID reference images, VQ eval images
    attn_tokens: int  # tokens of the attention check (flash vs math)


FORMS = {
    "gpu": Form(image=32, gen_image=32, vit="t", dit="s", n_train=1024, n_val=256, batch=128,
                gen_batch=64, steps=20, width=32, samples=128, attn_tokens=1024),
    "cpu": Form(image=8, gen_image=16, vit="xxs", dit="xxs", n_train=256, n_val=64, batch=32,
                gen_batch=16, steps=8, width=8, samples=32, attn_tokens=256),
}
CLASSES = 4
CHANNELS = 3  # the recipes are CIFAR's: colour jitter and grayscale expect RGB


def _data(size: int) -> dict:
    return {"source": "cifar100", "image_size": size, "root": None, "allow_download": False}


def _classify(f: Form) -> dict:
    return {"train_subset": None, "val_subset": None, "epochs": 1, "batch_size": f.batch,
            "eval_batch_size": 2 * f.batch, "optim": {"warmup_epochs": 0.5, "grad_clip": 1.0},
            "checkpoint_every_s": 60, "curve_every_steps": 4, "throughput_steps": 2}


def _gen(f: Form) -> dict:
    b, w, s, n = f.gen_batch, f.width, f.steps, f.samples
    return {
        "data": _data(f.gen_image),
        "vq": {"base_channels": w, "layers_per_block": 1, "codebook_size": 4 * w,
               "dead_code_steps": 3, "disc_start_step": s // 2, "disc_channels": w,
               "disc_layers": 1, "steps": s, "batch_size": b, "lr": 0.002, "eval_images": n,
               "checkpoint_every_s": 60},
        "latents": {"train_subset": None, "val_subset": None},
        "featnet": {"width": w, "feature_dim": 2 * w, "epochs": 1, "batch_size": 2 * b,
                    "train_subset": None},
        "dit": {"num_train_timesteps": 100, "steps": s, "batch_size": b,
                "optim": {"lr": 0.001, "lr_ref_batch": b, "grad_clip": 1.0}, "ema_decay": 0.9,
                "curve_every_steps": s // 2, "curve_samples": b, "checkpoint_every_s": 60},
        "sample": {"sampler": "ddim", "steps": 5, "cfg_scale": 2.0, "num_samples": n,
                   "batch_size": b},
        "fid": {"reference_images": 2 * n, "kid_subset_size": n // 2, "inception": False},
    }


def overrides(f: Form) -> dict:
    """The check's profile: only what differs from the recipes."""
    cls = _classify(f)
    pre = {"train_subset": None, "epochs": 1, "batch_size": f.batch,
           "optim": {"warmup_epochs": 0.5, "grad_clip": 1.0}, "checkpoint_every_s": 60,
           "throughput_steps": 2}
    return {"data": _data(f.image), "classify": cls,
            "mae": {"pretrain": pre, "finetune": {**cls, "curve_every_steps": None},
                    "linprobe": {**cls, "curve_every_steps": None}},
            "gen": _gen(f)}


def check_params(recipes: dict, f: Form) -> dict:
    """A complete params.yaml: the recipes as given, the check's profile, one-cell sweeps."""
    return {"profile": PROFILE,
            "sweep": {"sizes": [f.vit], "patches": [1, 4], "seeds": [0]},
            "mae_sweep": {"sizes": [f.vit], "patches": [2], "seeds": [0], "alt_target": None,
                          "alt_patches": []},
            "locality": {"variants": {}, "run": [], "seeds": [0]},
            "gen_sweep": {"sizes": [f.dit], "patches": [1], "seeds": [0], "tokenizer_seed": 0},
            "recipes": copy.deepcopy(recipes), "profiles": {PROFILE: overrides(f)}}


def read_recipes(path: Path = REPO_PARAMS) -> dict:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc.get("recipes"), dict):
        raise ValueError(f"{path}: no `recipes:` section to check")
    return doc["recipes"]


def prepare(work: Path, form: str, recipes_from: Path = REPO_PARAMS) -> dict:
    """Write <work>/params.yaml and the two caches under <work>/data; returns what was made."""
    from pixbench.config import load_params

    f = FORMS[form]
    params_path = Path(work) / "params.yaml"
    params_path.write_text(yaml.safe_dump(check_params(read_recipes(recipes_from), f),
                                          sort_keys=False))
    params = load_params(params_path)  # every problem of the check's params, at once
    data = Path(work) / "data"
    make_cache(data / PROFILE, params.active.data.model_dump(), f.n_train, f.n_val, CLASSES,
               CHANNELS)
    make_cache(data / f"{PROFILE}-gen", params.active.gen.data.model_dump(), f.n_train // 2,
               f.n_val // 2, CLASSES, CHANNELS)
    return {"params": str(params_path), "images": f"{f.n_train} train + {f.n_val} val, "
            f"{f.image}x{f.image}x{CHANNELS}; gen {f.gen_image}x{f.gen_image}x{CHANNELS}"}
