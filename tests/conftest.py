"""Shared fixtures: a tiny generated dataset, a tiny params file, isolated PIXBENCH_* paths.

Nothing here touches the network or the real datasets: the synthetic images are learnable (the
class sets which horizontal band is bright), so a tiny ViT reaches well above chance in a few steps.
The generator lives in tools/gpucheck/data.py (the GPU validation kit uses it too; pytest has
tools/ on its path, pyproject's `pythonpath`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

# Read when torch and numpy load their thread pools, so before `import torch`; subprocesses
# inherit them. Idle OpenMP threads sleep instead of spinning (numerics unchanged: same
# threads, same split); numpy's OpenBLAS (the 2048-d FID eigenvalues) uses one thread. On a
# busy 2-core machine spinning threads tripled the suite's CPU time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml

from gpucheck.data import make_cache, synthetic_split  # noqa: F401 - tests import it here

# One thread: the tests' models are tiny (a second thread costs more CPU than it saves, and
# the CLI subprocesses they are compared with run OMP_NUM_THREADS=1); tests that need two
# (test_loader's thread split) set them themselves.
torch.set_num_threads(1)

TINY_DATA = {"source": "fashion_mnist", "image_size": 8, "root": None, "allow_download": False,
             "skip_corrupt": False, "channels": "auto", "fast_decode": None}
TINY_CLASSIFY = {
    "pool": "avg", "drop_path": 0.1, "pos_embed": "learn",
    "permutation": {"kind": "none", "swaps": 0, "distance": 1, "seed": 0},
    "train_subset": None, "val_subset": None, "epochs": 2,
    "batch_size": 32, "eval_batch_size": 64, "label_smoothing": 0.1,
    "optim": {"lr": 0.03, "lr_ref_batch": 256, "betas": [0.9, 0.99], "weight_decay": 0.05,
              "warmup_epochs": 0.5, "min_lr_ratio": 0.0, "grad_clip": 1.0},
    "augment": {"hflip": True, "crop_padding": 0, "rrc_scale_min": None, "color_jitter": 0.0,
                "grayscale_p": 0.0},
    "precision": "fp32", "checkpoint_every_s": 60.0, "curve_every_steps": 5, "throughput_steps": 1,
}
TINY_MAE = {
    "pretrain": {"mask_ratio": 0.75, "target": "pix", "train_subset": None, "epochs": 2,
                 "batch_size": 32, "optim": TINY_CLASSIFY["optim"],
                 "augment": TINY_CLASSIFY["augment"], "precision": "fp32",
                 "checkpoint_every_s": 60.0, "throughput_steps": 1},
    "finetune": {**TINY_CLASSIFY, "curve_every_steps": None},
    "linprobe": {**TINY_CLASSIFY, "curve_every_steps": None, "drop_path": 0.0},
}
TINY_PARAMS = {"profile": "tiny", "sweep": {"sizes": ["xxs"], "patches": [1, 2, 4, 8], "seeds": [0]},
               "mae_sweep": {"sizes": ["xxs"], "patches": [1, 2, 4], "seeds": [0],
                             "alt_target": "norm_pix", "alt_patches": [2, 4]},
               "locality": {"variants": {"shuffle": {"permutation": {"kind": "shuffle", "swaps": 0,
                                                                   "distance": 1, "seed": 0}},
                                         "no-pos": {"pos_embed": "none"}},
                            "run": ["shuffle"], "seeds": [0]},
               "profiles": {"tiny": {"data": TINY_DATA, "classify": TINY_CLASSIFY,
                                     "mae": TINY_MAE}}}


def imagefolder_cfg(root: Path, size: int, **kw):
    """The data config of an ImageFolder tree at `root` (a test's generated one), at `size`
    px unless kw says otherwise."""
    from pixbench.config import DataConfig

    base = dict(source="imagefolder", image_size=size, root=str(root),
                allow_download=False, skip_corrupt=False, channels="auto", fast_decode=None)
    return DataConfig(**{**base, **kw})


def cache_bytes(cache_dir: Path) -> dict:
    """Every file of a prepared cache, as bytes: what "byte-identical caches" compares."""
    from pixbench.data.cache import FILES

    return {n: (cache_dir / n).read_bytes() for n in [*FILES, "manifest.json"]}


def make_tiny_cache(cache_dir: Path, data_cfg: dict = TINY_DATA, n_train: int = 256,
                    n_val: int = 64, classes: int = 4) -> dict:
    return make_cache(cache_dir, data_cfg, n_train, n_val, classes)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated project dir: PIXBENCH_* paths point inside it."""
    monkeypatch.setenv("PIXBENCH_CACHE_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIXBENCH_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PIXBENCH_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.delenv("PIXBENCH_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(TINY_PARAMS)


@pytest.fixture
def tiny_project(workdir: Path, tiny_params: dict) -> Path:
    """workdir with params.yaml and a prepared tiny cache; returns the params path."""
    make_tiny_cache(workdir / "data" / "tiny")
    return write_params(workdir / "params.yaml", tiny_params)


# The generation track at test scale: 16x16 synthetic images, 4x down-sampling -> 4x4x4 latents.
TINY_GEN = {
    "data": {"source": "fashion_mnist", "image_size": 16, "root": None, "allow_download": False,
             "skip_corrupt": False, "channels": "auto", "fast_decode": None},
    "vq": {"pretrained": None, "downsample": 4, "base_channels": 8, "layers_per_block": 1,
           "mid_attention": False, "latent_channels": 4, "codebook_size": 16, "commitment": 0.25,
           "dead_code_steps": 3, "disc_start_step": 4, "disc_weight": 0.5, "disc_channels": 8,
           "disc_layers": 1, "steps": 8, "batch_size": 16, "lr": 0.002, "betas": [0.5, 0.9],
           "eval_images": 32, "checkpoint_every_s": 60},
    "latents": {"train_subset": None, "val_subset": None},
    "featnet": {"width": 8, "feature_dim": 16, "epochs": 1, "batch_size": 32, "lr": 0.003,
                "train_subset": None, "pretrained": None},
    "dit": {"pos_embed": "learn", "class_dropout": 0.1, "num_train_timesteps": 100,
            "beta_schedule": "linear", "steps": 6, "batch_size": 16,
            "optim": {"lr": 0.001, "lr_ref_batch": 16, "betas": [0.9, 0.999], "weight_decay": 0.0,
                      "warmup_epochs": 0.0, "min_lr_ratio": 1.0, "grad_clip": 1.0},
            "ema_decay": 0.9, "curve_every_steps": 3, "curve_samples": 16, "precision": "fp32",
            "checkpoint_every_s": 60},
    "sample": {"sampler": "ddim", "steps": 5, "eta": 0.0, "cfg_scale": 2.0, "num_samples": 32,
               "batch_size": 16},
    "fid": {"reference": "train", "reference_images": 64, "kid_subset_size": 16,
            "prc_neighborhood": 3, "inception": False},
}
TINY_GEN_SWEEP = {"sizes": ["xxs"], "patches": [1, 2], "seeds": [0], "tokenizer_seed": 0}


@pytest.fixture
def gen_project(workdir: Path, tiny_params: dict) -> Path:
    """workdir with a params.yaml that has a gen section and a prepared 16x16 gen cache."""
    params = copy.deepcopy(tiny_params)
    params["profiles"]["tiny"]["gen"] = copy.deepcopy(TINY_GEN)
    params["gen_sweep"] = dict(TINY_GEN_SWEEP)
    make_tiny_cache(workdir / "data" / "tiny")
    make_tiny_cache(workdir / "data" / "tiny-gen", TINY_GEN["data"], n_train=128, n_val=32)
    return write_params(workdir / "params.yaml", params)
