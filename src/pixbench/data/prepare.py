"""`pixbench data prepare`: source -> resize -> uint8 cache with a manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixbench.config import DataConfig
from pixbench.data.cache import write_cache
from pixbench.data.sources import Split, load_cifar, load_fashion_mnist, load_image_folder
from pixbench.errors import UserError


def resize_uint8(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Antialiased bilinear resize of uint8 (N, H, W, C) images; identity when already `size`."""
    import torch
    import torch.nn.functional as F

    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((images.shape[0], size, size, images.shape[3]), dtype=np.uint8)
    for i in range(0, images.shape[0], chunk):
        x = torch.from_numpy(np.array(images[i:i + chunk])).permute(0, 3, 1, 2)
        y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)  # (n, C, size, size)
        out[i:i + chunk] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def load_split(cfg: DataConfig, split: str, data_root: Path | None) -> Split:
    if cfg.source == "fashion_mnist":
        return load_fashion_mnist(split, data_root, cfg.allow_download)
    if cfg.source in ("cifar10", "cifar100"):
        return load_cifar(cfg.source, split, data_root, cfg.allow_download)
    if cfg.root is None:
        raise UserError("data.root must name the ImageFolder directory when data.source=imagefolder")
    root = Path(cfg.root)
    if not root.is_absolute():
        if data_root is None:
            raise UserError(f"data.root={cfg.root} is relative but PIXBENCH_DATA_ROOT is not set")
        root = data_root / root
    return load_image_folder(root, split, cfg.image_size)


def prepare(cfg: DataConfig, out_dir: Path, data_root: Path | None) -> dict:
    """Build the cache for one profile's data section; returns the manifest."""
    splits, classes = {}, None
    for split in ("train", "val"):
        s = load_split(cfg, split, data_root)
        if classes is not None and tuple(classes) != s.classes:
            raise UserError(f"{cfg.source}: train and val class lists differ")
        classes = s.classes
        splits[split] = (resize_uint8(s.images, cfg.image_size), s.labels)
    meta = {"source": cfg.source, "spec": cfg.model_dump()}
    return write_cache(out_dir, splits, list(classes), meta)


def run(spec, paths, *, stale: str = "error", device: str = "auto", progress: bool = True) -> dict:
    """The `prepare` task (a PrepareSpec): the cache of one track's images."""
    out = paths.gen_cache_for(spec.profile) if spec.track == "gen" else paths.cache_for(spec.profile)
    manifest = prepare(spec.data, out, paths.data_root)
    return {"run_id": spec.run_id, "path": str(out), "counts": manifest["counts"],
            "image_size": manifest["image_size"], "channels": manifest["channels"],
            "num_classes": manifest["num_classes"]}
