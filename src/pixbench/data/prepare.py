"""`pixbench data prepare`: source -> resize -> uint8 cache with a manifest.

Order matters for "nothing lost, nothing escapes": every input is checked (the cache location
is writable, ImageFolder structure and class lists) before anything is decoded, every image is
decoded before anything is written, and the cache is written into a temp dir renamed into place
(cache.py). ImageFolder images are decoded and centre-crop-resized here, once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from pixbench.config import DataConfig
from pixbench.data.cache import SPLITS, write_cache
from pixbench.data.sources import (FolderSplit, Split, check_same_classes, listed, load_cifar,
                                   load_fashion_mnist, scan_image_folder, shown)
from pixbench.errors import UserError

MAX_PIXELS = 89_478_485  # PIL's default MAX_IMAGE_PIXELS, enforced even where PIL's is turned off
SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
GRAY_MODES = frozenset({"1", "L", "LA", "La"}) | SIXTEEN_BIT
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


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


# ------------------------------------------------------------------------ ImageFolder decoding


def to_8bit(im):
    """Any PIL image -> 8-bit "L" (gray modes) or "RGB" (everything else: P, CMYK, YCbCr...).

    16-bit gray (I;16*, and I: PIL's mode for 16-bit PNGs in some versions and for integer
    TIFFs, clipped to 0..65535) is scaled by 1/257, rounded: 65535 -> 255 and 257*v -> v, the
    inverse of how 8-bit values widen to 16. PIL's convert("L") clips instead, turning a
    0..65535 ramp nearly white.
    Transparency (RGBA, LA, PA, a palette or tRNS transparency) is composited onto white, what
    a viewer shows on a page: dropping alpha would expose the colours stored under fully
    transparent pixels (often black, sometimes editing leftovers) that nobody saw when labelling.
    """
    from PIL import Image

    if im.mode in SIXTEEN_BIT:
        a = np.clip(np.asarray(im, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(a).astype(np.uint8))
    if im.mode == "F":
        raise ValueError("32-bit float pixels (mode F) have no fixed range to map onto 8 bits")
    gray = im.mode in GRAY_MODES
    if im.mode not in ALPHA_MODES and "transparency" not in im.info:
        return im.convert("L" if gray else "RGB")
    a = np.asarray(im.convert("LA" if gray else "RGBA"), dtype=np.float64)
    alpha = a[..., -1:] / 255.0
    out = np.round(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return Image.fromarray(out[..., 0] if gray else out)


def _crop_resize(im, size: int) -> np.ndarray:
    """Centre-crop the largest square, then resize with antialiasing (ImageNet 28x28 in the
    paper); (size, size, 1) for gray, (size, size, 3) for colour."""
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC,
                                                        reducing_gap=None)
    a = np.asarray(im, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def decode_file(job: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    """One image file -> (its crop, None), or (None, why it cannot be decoded)."""
    from PIL import Image

    path, size = job
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit: a bomb must be an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ValueError(f"{im.width}x{im.height} pixels exceeds {MAX_PIXELS} "
                                     "(decompression bomb?)")
                im.load()  # decode every byte now: truncated or corrupt data fails here
                return _crop_resize(to_8bit(im), size), None
    except Exception as exc:  # noqa: BLE001 - whatever fails decoding a file is that file's fault
        return None, _why(exc)


def _why(exc: Exception) -> str:
    """Why a file did not decode, without repeating its path (the message starts with it)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image PIL can identify: empty, truncated header, text or unknown format"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # FileNotFoundError (broken symlink), PermissionError...
    return f"{exc.__class__.__name__}: {exc}"


def decode_folder(fs: FolderSplit, image_size: int, workers: int = 2,
                  skip_corrupt: bool | None = None) -> Split:
    """Decode every file of a scanned split. Unreadable files are refused, naming the first
    (skip_corrupt=True leaves them out and lists them). All-gray splits keep one channel;
    any colour image makes the split 3-channel (gray images replicated, as PIL's L -> RGB)."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    n = len(fs.files)
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    ok, bad, gray = np.ones(n, dtype=bool), [], True
    jobs = [(f, image_size) for f in fs.files]
    with contextlib.ExitStack() as stack:
        if workers > 1 and n > 256:
            pool = stack.enter_context(ProcessPoolExecutor(workers))
            results = pool.map(decode_file, jobs, chunksize=256)
        else:
            results = map(decode_file, jobs)
        i = 0
        try:
            for i, (img, why) in enumerate(results):
                if img is None:
                    ok[i] = False
                    bad.append((fs.files[i], why))
                else:
                    out[i] = img  # a gray (s, s, 1) crop broadcasts onto the 3 channels
                    gray = gray and img.shape[2] == 1
        except BrokenProcessPool:  # a decoder crashed hard (or was killed): no exception to name
            raise UserError(f"{shown(fs.files[i])}: an image decoding process died at or soon "
                            f"after this file (a file that crashes PIL, or out of memory)") from None
    if bad and not skip_corrupt:
        more = f"; {len(bad) - 1} more unreadable image files under {shown(fs.split_dir)}" \
            if len(bad) > 1 else ""
        hint = "; set data.skip_corrupt: true to leave them out" if skip_corrupt is False else ""
        raise UserError(f"{shown(bad[0][0])}: cannot decode image ({bad[0][1]}){more}{hint}")
    labels = fs.labels[ok]
    if bad:
        out = out[ok]
        emptied = [c for i, c in enumerate(fs.classes) if not (labels == i).any()]
        if emptied:
            raise UserError(f"{shown(fs.split_dir)}: no readable images left in class folders "
                            f"{listed(emptied)}")
    images = np.ascontiguousarray(out[..., :1]) if gray else out
    return Split(images, labels, fs.classes, tuple(shown(f) for f, _ in bad))


def load_image_folder(root: Path, split: str, image_size: int, workers: int = 2) -> Split:
    """An ImageFolder tree `root/{train,val}/<class>/<image>`, crop-and-resized to image_size."""
    return decode_folder(scan_image_folder(root, split), image_size, workers)


# ---------------------------------------------------------------------------------- prepare


def _folder_root(cfg: DataConfig, data_root: Path | None) -> Path:
    if cfg.root is None:
        raise UserError("data.root must name the ImageFolder directory when data.source=imagefolder")
    root = Path(cfg.root)
    if not root.is_absolute():
        if data_root is None:
            raise UserError(f"data.root={cfg.root} is relative but PIXBENCH_DATA_ROOT is not set")
        root = data_root / root
    return root


def load_split(cfg: DataConfig, split: str, data_root: Path | None) -> Split:
    if cfg.source == "fashion_mnist":
        return load_fashion_mnist(split, data_root, cfg.allow_download)
    if cfg.source in ("cifar10", "cifar100"):
        return load_cifar(cfg.source, split, data_root, cfg.allow_download)
    return load_image_folder(_folder_root(cfg, data_root), split, cfg.image_size)


def load_splits(cfg: DataConfig, data_root: Path | None) -> dict[str, Split]:
    """Both splits, resized, with equal class lists and channel counts."""
    if cfg.source == "imagefolder":
        root = _folder_root(cfg, data_root)
        scans = {s: scan_image_folder(root, s) for s in SPLITS}
        check_same_classes(scans["train"], scans["val"])  # before hours of decoding
        splits = {s: decode_folder(scans[s], cfg.image_size, skip_corrupt=cfg.skip_corrupt)
                  for s in SPLITS}
    else:  # resize each split as it comes: the raw train split is freed before val loads
        splits = {}
        for s in SPLITS:
            sp = load_split(cfg, s, data_root)
            splits[s] = dataclasses.replace(sp, images=resize_uint8(sp.images, cfg.image_size))
    if splits["train"].classes != splits["val"].classes:
        raise UserError(f"{cfg.source}: train and val class lists differ")
    for s, sp in splits.items():
        if len(sp.images) == 0:
            raise UserError(f"{cfg.source}: the {s} split has no images")
    if {sp.images.shape[3] for sp in splits.values()} == {1, 3}:  # gray train, colour val...
        splits = {s: dataclasses.replace(sp, images=np.repeat(sp.images, 3 // sp.images.shape[3],
                                                              axis=3))
                  for s, sp in splits.items()}
    return splits


def check_writable(out_dir: Path) -> None:
    """Before any decoding: the cache's nearest existing ancestor is a writable folder."""
    p = out_dir.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{p}: is not a directory (cannot hold the dataset cache {out_dir})")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{p}: not writable (cannot create the dataset cache {out_dir})")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a dataset cache folder")


def prepare(cfg: DataConfig, out_dir: Path, data_root: Path | None) -> dict:
    """Build the cache for one profile's data section; returns the manifest."""
    out_dir = Path(out_dir)
    check_writable(out_dir)
    splits = load_splits(cfg, data_root)
    meta = {"source": cfg.source, "spec": cfg.model_dump()}
    skipped = {s: list(sp.skipped) for s, sp in splits.items() if sp.skipped}
    if skipped:  # nothing lost silently: what was left out is on record
        meta["skipped"] = skipped
    return write_cache(out_dir, {s: (sp.images, sp.labels) for s, sp in splits.items()},
                       list(splits["train"].classes), meta)


def run(spec, paths, *, stale: str = "error", device: str = "auto", progress: bool = True) -> dict:
    """The `prepare` task (a PrepareSpec): the cache of one track's images."""
    out = paths.gen_cache_for(spec.profile) if spec.track == "gen" else paths.cache_for(spec.profile)
    manifest = prepare(spec.data, out, paths.data_root)
    return {"run_id": spec.run_id, "path": str(out), "counts": manifest["counts"],
            "image_size": manifest["image_size"], "channels": manifest["channels"],
            "num_classes": manifest["num_classes"]}
