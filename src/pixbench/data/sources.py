"""Dataset sources: each returns uint8 images (N, H, W, C), int64 labels (N,) and class names.

Sources never resize; `prepare.py` does that once, so that training never decodes image files.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixbench.errors import UserError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# sha256 of the *decompressed* IDX files: Debian re-gzipped them, so archive checksums differ
# from upstream's while the bytes inside are the same.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DOWNLOAD_DIR = Path.home() / ".cache" / "pixbench"  # used when PIXBENCH_DATA_ROOT is unset


@dataclass(frozen=True)
class Split:
    """One split of a source, before resizing."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]


# ---------------------------------------------------------------- Fashion-MNIST (embedded default)


def _read_idx(raw: bytes, name: str) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format): magic, dims as big-endian int32, then uint8 data."""
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{name}: not a uint8 IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim  # 16 for images, 8 for labels
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{name}: truncated IDX file ({data.size} values, header says {dims})")
    return data.reshape(dims)


def _fashion_mnist_candidates(data_root: Path | None) -> list[Path]:
    dirs = []
    if data_root is not None:
        dirs += [data_root / "fashion-mnist", data_root / "FashionMNIST" / "raw", data_root]
    dirs += [FASHION_MNIST_DEBIAN_DIR, DOWNLOAD_DIR / "fashion-mnist"]
    return dirs


def _find_idx(stem: str, data_root: Path | None) -> Path | None:
    for d in _fashion_mnist_candidates(data_root):
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def _download_idx(stem: str, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{stem}.gz"
    tmp = dest.with_suffix(".gz.part")
    try:
        with urllib.request.urlopen(FASHION_MNIST_URL + stem + ".gz", timeout=30) as r, \
                open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"Fashion-MNIST file {stem}.gz not found and its download failed "
            f"({exc.__class__.__name__}); install it with `apt-get install dataset-fashion-mnist` "
            "or put the IDX files in $PIXBENCH_DATA_ROOT/fashion-mnist"
        ) from None
    tmp.replace(dest)
    return dest


def load_fashion_mnist(split: str, data_root: Path | None, allow_download: bool) -> Split:
    """Fashion-MNIST from the Debian package, PIXBENCH_DATA_ROOT, or upstream when online."""
    prefix = "train" if split == "train" else "t10k"
    arrays = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        path = _find_idx(stem, data_root)
        if path is None:
            if not allow_download:
                raise UserError(
                    f"Fashion-MNIST file {stem}(.gz) not found in "
                    f"{', '.join(map(str, _fashion_mnist_candidates(data_root)))}; install it with "
                    "`apt-get install dataset-fashion-mnist` or set PIXBENCH_DATA_ROOT"
                )
            path = _download_idx(stem, (data_root or DOWNLOAD_DIR) / "fashion-mnist")
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest != FASHION_MNIST_FILES[stem]:
            raise UserError(f"{path}: sha256 of decompressed bytes {digest[:12]}… does not match "
                            f"Fashion-MNIST's {FASHION_MNIST_FILES[stem][:12]}…")
        arrays[kind] = _read_idx(raw, str(path))
    images = arrays["images-idx3-ubyte"][..., None]  # (N, 28, 28, 1)
    labels = arrays["labels-idx1-ubyte"].astype(np.int64)
    return Split(np.ascontiguousarray(images), labels, FASHION_MNIST_CLASSES)


# ---------------------------------------------------------------------------- CIFAR-10 / CIFAR-100


def load_cifar(name: str, split: str, data_root: Path | None, allow_download: bool) -> Split:
    """CIFAR-10/100 through torchvision (its own md5 checks), from a local copy or a download."""
    from torchvision import datasets  # lazy: torchvision import is slow

    if data_root is None:
        raise UserError(f"data.source={name} needs PIXBENCH_DATA_ROOT (the folder holding "
                        f"{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'})")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(root=str(data_root), train=(split == "train"), download=allow_download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise UserError(f"{name} under {data_root}: {exc}") from None
    except OSError as exc:
        what = "download failed" if allow_download else f"cannot read {exc.filename or 'files'}"
        raise UserError(f"{name} under {data_root}: {what} ({exc.__class__.__name__}); "
                        "place a local copy there") from None
    images = np.ascontiguousarray(ds.data)  # (N, 32, 32, 3) uint8
    return Split(images, np.asarray(ds.targets, dtype=np.int64), tuple(ds.classes))


# -------------------------------------------------------------------------------- ImageFolder


def _crop_resize_file(args: tuple[str, int]) -> np.ndarray:
    """Centre-crop the largest square, then resize with antialiasing (ImageNet 28x28 in the paper)."""
    from PIL import Image

    path, size = args
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC,
                                                            reducing_gap=None)
        return np.asarray(im, dtype=np.uint8)


def load_image_folder(root: Path, split: str, image_size: int, workers: int = 2) -> Split:
    """An ImageFolder tree `root/{train,val}/<class>/<image>`, crop-and-resized to image_size."""
    from concurrent.futures import ProcessPoolExecutor

    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"ImageFolder split not found: {split_dir} (expected {root}/train and {root}/val)")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise UserError(f"{split_dir}: no class folders")
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".jpe"}
    files, labels = [], []
    for idx, cls in enumerate(classes):
        for p in sorted((split_dir / cls).rglob("*")):
            if p.suffix.lower() in exts:
                files.append(str(p))
                labels.append(idx)
    if not files:
        raise UserError(f"{split_dir}: no image files")
    jobs = [(f, image_size) for f in files]
    try:
        if workers > 1 and len(files) > 256:
            with ProcessPoolExecutor(workers) as pool:
                imgs = list(pool.map(_crop_resize_file, jobs, chunksize=256))
        else:
            imgs = [_crop_resize_file(j) for j in jobs]
    except OSError as exc:
        raise UserError(f"ImageFolder {split_dir}: cannot decode an image ({exc})") from None
    return Split(np.stack(imgs), np.asarray(labels, dtype=np.int64), tuple(classes))
