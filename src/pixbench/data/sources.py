"""Dataset sources: each returns uint8 images (N, H, W, C), int64 labels (N,) and class names.

Sources never resize; `prepare.py` does that once, so that training never decodes image files.
ImageFolder trees are only scanned here (classes, files, every structural problem before any
decoding); `prepare.py` decodes and crop-resizes their images.
Every failure to read an input is a UserError naming the file: an OSError, a truncated gzip
(EOFError, which click would print as a bare `Aborted.`) or a truncated pickle included.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import shutil
import urllib.request
import zlib
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
    skipped: tuple[str, ...] = ()  # unreadable files left out on request (ImageFolder only)


def shown(path: Path | str) -> str:
    """A path as printable text: undecodable bytes of a file name become \\xNN, so an error
    message about it can always be printed (a surrogate would crash the print)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def read_error(path: Path, exc: BaseException) -> UserError:
    """One line naming the file for any failure to read or decompress it."""
    if isinstance(exc, EOFError):
        why = "truncated: the data ends early"
    elif isinstance(exc, gzip.BadGzipFile):
        why = "not a gzip file"
    elif isinstance(exc, zlib.error):
        why = f"corrupt compressed data ({exc})"
    elif isinstance(exc, OSError):
        why = exc.strerror or str(exc) or exc.__class__.__name__
    else:
        why = f"{exc.__class__.__name__}: {exc}"
    return UserError(f"{shown(path)}: cannot read ({why})")


# ---------------------------------------------------------------- Fashion-MNIST (embedded default)


def _read_idx(raw: bytes, name: str, ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format): magic, dims as big-endian int32, then uint8 data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{name}: not a uint8 IDX file (bad magic number)")
    if ndim is not None and raw[3] != ndim:
        raise UserError(f"{name}: IDX file has {raw[3]} dimensions, expected {ndim}")
    offset = 4 + 4 * raw[3]  # 16 for images, 8 for labels
    if len(raw) < offset:
        raise UserError(f"{name}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3]))
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != math.prod(dims):  # math.prod: exact for any header, np.prod could overflow
        what = "truncated" if data.size < math.prod(dims) else "oversized"
        raise UserError(f"{name}: {what} IDX file ({data.size} values, header says {dims})")
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
    dest = dest_dir / f"{stem}.gz"
    tmp = dest.with_suffix(".gz.part")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
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


def _idx_file(stem: str, data_root: Path | None, allow_download: bool) -> tuple[Path, np.ndarray]:
    """Find, read, parse and checksum one IDX file."""
    path = _find_idx(stem, data_root)
    if path is None:
        if not allow_download:
            raise UserError(
                f"Fashion-MNIST file {stem}(.gz) not found in "
                f"{', '.join(map(str, _fashion_mnist_candidates(data_root)))}; install it with "
                "`apt-get install dataset-fashion-mnist` or set PIXBENCH_DATA_ROOT")
        path = _download_idx(stem, (data_root or DOWNLOAD_DIR) / "fashion-mnist")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise read_error(path, exc) from None
    # structure first: a damaged file gets the specific message, not only "sha256 differs"
    arr = _read_idx(raw, str(path), ndim=3 if "images" in stem else 1)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FASHION_MNIST_FILES[stem]:
        raise UserError(f"{path}: sha256 of decompressed bytes {digest[:12]}… does not match "
                        f"Fashion-MNIST's {FASHION_MNIST_FILES[stem][:12]}…")
    return path, arr


def load_fashion_mnist(split: str, data_root: Path | None, allow_download: bool) -> Split:
    """Fashion-MNIST from the Debian package, PIXBENCH_DATA_ROOT, or upstream when online."""
    prefix = "train" if split == "train" else "t10k"
    img_path, images = _idx_file(f"{prefix}-images-idx3-ubyte", data_root, allow_download)
    lab_path, labels = _idx_file(f"{prefix}-labels-idx1-ubyte", data_root, allow_download)
    if len(labels) != len(images):
        raise UserError(f"{lab_path}: {len(labels)} labels for the {len(images)} images of "
                        f"{img_path}")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{lab_path}: label {int(labels.max())} is not a class index 0..9")
    return Split(np.ascontiguousarray(images[..., None]), labels.astype(np.int64),
                 FASHION_MNIST_CLASSES)  # images (N, 28, 28, 1)


# ---------------------------------------------------------------------------- CIFAR-10 / CIFAR-100


def _cifar_files(cls, data_root: Path) -> list[tuple[Path, str]]:
    base = data_root / cls.base_folder
    pairs = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return [(base / name, md5) for name, md5 in pairs]


def _cifar_md5_problem(cls, name: str, data_root: Path) -> str | None:
    """Which file torchvision's "not found or corrupted" is about (it does not say)."""
    from torchvision.datasets.utils import check_integrity

    for path, md5 in _cifar_files(cls, data_root):
        if not path.is_file():
            return f"{path}: missing ({name} needs every file of {path.parent.name})"
        if not check_integrity(str(path), md5):
            return f"{path}: md5 does not match {name}'s (truncated or corrupt; replace it)"
    return None


# What a CIFAR batch pickle names: numpy's array constructors (protocols 2-4: _reconstruct,
# 5: _frombuffer; numpy 1 and 2 module names) and _codecs.encode, which protocol-2 pickles use
# for bytes. Nothing among them runs code or touches files.
_CIFAR_GLOBALS = frozenset({(f"numpy.{core}.{mod}", fn) for core in ("core", "_core")
                            for mod, fn in (("multiarray", "_reconstruct"),
                                            ("numeric", "_frombuffer"))}
                           | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """The diagnosis below re-reads files torchvision just failed on, so they may be anything:
    any global beyond _CIFAR_GLOBALS is refused before it is looked up, let alone called."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (not a CIFAR batch)")
        return super().find_class(module, name)


def _cifar_unpickle_problem(cls, data_root: Path) -> str | None:
    """Which pickle does not load (truncated, not a pickle): the file torchvision's error hides."""
    for path, _ in _cifar_files(cls, data_root):
        try:
            with open(path, "rb") as f:
                entry = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except Exception as exc:  # noqa: BLE001 - any failure to unpickle is this file's fault
            return str(read_error(path, exc))
        if not isinstance(entry, dict):
            return f"{path}: not a CIFAR batch (a pickled {type(entry).__name__}, not a dict)"
    return None


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
        raise UserError(_cifar_md5_problem(cls, name, data_root)
                        or f"{name} under {data_root}: {exc}") from None
    except OSError as exc:
        archive = data_root / cls.filename
        if not allow_download:
            raise read_error(Path(exc.filename or data_root / cls.base_folder), exc) from None
        what = (f"{archive}: md5 does not match (truncated or corrupt archive) and the download "
                "failed") if archive.is_file() else f"{name} under {data_root}: download failed"
        raise UserError(f"{what} ({exc.__class__.__name__}); place a local copy there") from None
    except (EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError, IndexError,
            AttributeError) as exc:  # a pickle that passed the md5 check (or had none) but not load
        raise UserError(_cifar_unpickle_problem(cls, data_root)
                        or f"{name} under {data_root}: unreadable batch ({exc})") from None
    images = np.ascontiguousarray(ds.data)  # (N, 32, 32, 3) uint8
    labels = np.asarray(ds.targets, dtype=np.int64)
    if len(labels) != len(images) or (labels.size and not 0 <= labels.min() <= labels.max()
                                      < len(ds.classes)):
        raise UserError(f"{name} under {data_root}: labels do not fit the {len(images)} images "
                        f"and {len(ds.classes)} classes")
    return Split(images, labels, tuple(ds.classes))


# -------------------------------------------------------------------------------- ImageFolder

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".ppm",
                        ".pgm", ".pbm", ".tif", ".tiff"})


@dataclass(frozen=True)
class FolderSplit:
    """The image files of one ImageFolder split, scanned and checked, not yet decoded."""

    split_dir: Path
    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray  # (N,) int64, files sorted by class then path


def listed(names: list[str], k: int = 5) -> str:
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(shown(n) for n in names[:k]) + more


def _class_files(class_dir: Path) -> list[str]:
    out = []
    for p in sorted(class_dir.rglob("*")):
        # hidden files and folders (.DS_Store, macOS ._x.jpg, .ipynb_checkpoints) are no images
        # of the class; a broken symlink is kept, so that decoding names it instead of losing it
        if any(part.startswith(".") for part in p.relative_to(class_dir).parts):
            continue
        if p.suffix.lower() in IMAGE_EXTS and (p.is_file() or p.is_symlink()):
            out.append(str(p))
    return out


def _check_root(root: Path) -> None:
    if not root.exists():
        raise UserError(f"data.root: {shown(root)} does not exist")
    if not root.is_dir():
        raise UserError(f"data.root: {shown(root)} is not a directory (expected an ImageFolder "
                        "tree with train/ and val/)")


def split_folder(root: Path, split: str) -> Path:
    """`root/split`, refused (one line) when the root or the split is missing."""
    _check_root(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"ImageFolder split not found: {shown(split_dir)} (expected "
                        f"{shown(root)}/train and {shown(root)}/val)")
    return split_dir


def check_classes(split_dir: Path, counts: dict[str, int]) -> None:
    """The class folders of a split, {name: images}: at least one, names valid UTF-8 (they go
    into manifests and reports), none empty."""
    if not counts:
        raise UserError(f"{shown(split_dir)}: no class folders")
    bad = [n for n in counts if shown(n) != n]
    if bad:
        raise UserError(f"{shown(split_dir)}: class folder names that are not valid UTF-8: "
                        f"{listed(bad)}")
    empty = [c for c, n in counts.items() if not n]
    if empty:  # a class without images could be neither learned nor scored: never silently
        raise UserError(f"{shown(split_dir)}: class folders without image files: {listed(empty)}")


def scan_image_folder(root: Path, split: str) -> FolderSplit:
    """`root/{split}/<class>/**/<image>`: classes are the visible sub-folders, each must hold
    at least one image file, and class names must be valid UTF-8 (they go into manifests and
    reports)."""
    split_dir = split_folder(root, split)
    try:
        dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        per_class = {d.name: _class_files(d) for d in dirs}
    except OSError as exc:
        raise read_error(Path(exc.filename or split_dir), exc) from None
    check_classes(split_dir, {c: len(files) for c, files in per_class.items()})
    classes = tuple(per_class)
    files = tuple(f for c in classes for f in per_class[c])
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(per_class[c]) for c in classes])
    return FolderSplit(split_dir, classes, files, labels)


def check_same_classes(train: FolderSplit, val: FolderSplit) -> None:
    """Labels are class indices: train and val must list the same class folders."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise UserError(f"{shown(train.split_dir.parent)}: train/ and val/ class folders differ: "
                        f"only in train/: {listed(only_train) or '-'}; "
                        f"only in val/: {listed(only_val) or '-'}")
