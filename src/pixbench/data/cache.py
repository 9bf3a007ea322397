"""The uint8 dataset cache: `{split}_images.npy` (N, H, W, C), `{split}_labels.npy` (N,) and
`manifest.json` (shapes, class names, per-channel mean/std, sha256 of every file).

Training memory-maps the arrays and never decodes an image file. Every file is checked against
the manifest on load, so a corrupt or truncated cache is a one-line error, never silent garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixbench.errors import UserError

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CachedDataset:
    """A loaded cache: uint8 images (N, H, W, C) per split, labels, and the manifest."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def channels(self) -> int:
        return int(self.manifest["channels"])

    @property
    def mean(self) -> list[float]:
        return list(self.manifest["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.manifest["std"])


def write_cache(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                classes: list[str], meta: dict) -> dict:
    """Write all arrays and the manifest into a temp dir, then swap it in: never half-written."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {}
        for split, (images, labels) in splits.items():
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"{split} images must be uint8 (N, H, W, C), got {images.dtype} "
                                 f"{images.shape}")
            for kind, arr in (("images", images), ("labels", labels.astype(np.int64))):
                name = f"{split}_{kind}.npy"
                np.save(tmp / name, np.ascontiguousarray(arr))
                files[name] = {"shape": list(arr.shape), "sha256": sha256_file(tmp / name)}
        train = splits["train"][0].astype(np.float64) / 255.0  # (N, H, W, C)
        manifest = {
            "format_version": FORMAT_VERSION,
            **meta,
            "image_size": int(splits["train"][0].shape[1]),
            "channels": int(splits["train"][0].shape[3]),
            "num_classes": len(classes),
            "classes": list(classes),
            "counts": {s: int(splits[s][0].shape[0]) for s in splits},
            # per-channel statistics of the training split, for input normalisation
            "mean": [round(float(v), 6) for v in train.mean(axis=(0, 1, 2))],
            "std": [round(float(v), 6) for v in train.std(axis=(0, 1, 2))],
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
        os.chmod(out_dir, 0o755)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(cache_dir: Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"dataset cache not found: {path} (run `pixbench data prepare`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: corrupt manifest ({exc.__class__.__name__})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: cache format {manifest.get('format_version')} is not "
                        f"{FORMAT_VERSION}; re-run `pixbench data prepare`")
    return manifest


def load_cache(cache_dir: Path, verify: bool = True) -> CachedDataset:
    """Memory-map a cache; with verify, every file's sha256 is checked against the manifest."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    arrays = {}
    for name, info in manifest["files"].items():
        path = cache_dir / name
        if not path.is_file():
            raise UserError(f"dataset cache file missing: {path}")
        if verify and sha256_file(path) != info["sha256"]:
            raise UserError(f"{path}: sha256 does not match {cache_dir / MANIFEST} (corrupt cache; "
                            "re-run `pixbench data prepare`)")
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise UserError(f"{path}: unreadable array ({exc})") from None
        if list(arr.shape) != info["shape"]:
            raise UserError(f"{path}: shape {list(arr.shape)} is not the manifest's {info['shape']}")
        arrays[name[:-4]] = arr
    return CachedDataset(arrays["train_images"], arrays["train_labels"], arrays["val_images"],
                         arrays["val_labels"], manifest)
