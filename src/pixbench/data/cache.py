"""The uint8 dataset cache: `{split}_images.npy` (N, H, W, C), `{split}_labels.npy` (N,) and
`manifest.json` (shapes, classes, per-channel mean/std, size and sha256 of every file, and the
sha256 of its own content). Training memory-maps the arrays and never decodes an image.

Checks: every load, the manifest's own checksum and each array's size, dtype, shape and a quick
hash (whole file when small, sampled blocks when large); `load_cache(full=True)` and `pixbench
data verify` re-hash every byte against the sha256 taken once at prepare. A corrupt cache is a
one-line error naming the file. Writes go to a hidden dir next to the cache, renamed into place
at the end (never half-written); the temp dirs a killed prepare leaves are removed by the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixbench.data.stats import channel_hist, stats_from_hist
from pixbench.errors import UserError

SPLITS = ("train", "val")
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: manifest self-checksum, file sizes and quick hashes
FILES = {f"{s}_{k}.npy": dt for s in SPLITS for k, dt in (("images", "uint8"), ("labels", "int64"))}
SELF_KEY = "manifest_sha256"
FULL_HASH_MAX = 64 << 20  # files up to 64 MiB are hashed whole on every load (~0.1 s)
PROBE_BLOCKS, PROBE_BLOCK = 64, 1 << 16  # larger ones: 64 blocks of 64 KiB, first and last included
STALE_AFTER_S = 24 * 3600  # a temp dir this old is stale even if its pid looks alive (pid reuse)
# `.{cache}.tmp-{host}-{pid}-{random}` (being written) and `.{cache}.old-...` (the previous cache
# while the new one is swapped in). Host and pid say whether the writer can still be running.
TEMP_RE = re.compile(r"\.(?P<cache>.+)\.(?:tmp|old)-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[A-Za-z0-9_]+")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def quick_sha256(path: Path, size: int) -> str:
    """The whole file's sha256 when small; else the sha256 of PROBE_BLOCKS evenly spaced blocks
    (4 MiB read whatever the size). It catches truncation, a replaced file and most partial
    overwrites without re-reading gigabytes on every training start."""
    if size <= FULL_HASH_MAX:
        return sha256_file(path)
    h = hashlib.sha256()
    step = (size - PROBE_BLOCK) / (PROBE_BLOCKS - 1)
    with open(path, "rb") as f:
        for i in range(PROBE_BLOCKS):
            f.seek(round(i * step))
            h.update(f.read(PROBE_BLOCK))
    return h.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum field."""
    body = {k: v for k, v in manifest.items() if k != SELF_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


# ------------------------------------------------------------------------------------ writing


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or exc.__class__.__name__


def host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _owner_gone(host: str, pid: int, mtime: float) -> bool:
    """Whether the prepare that made a temp dir can no longer be writing it."""
    if time.time() - mtime > STALE_AFTER_S:
        return True
    if host != host_tag():
        return False  # another node's writer may still be running: only age tells
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def clean_stale_temps(cache_root: Path) -> list[Path]:
    """Remove the temp dirs killed prepares left directly under cache_root: only names matching
    TEMP_RE (never a cache itself, never anything else) whose writer is gone."""
    removed = []
    if not cache_root.is_dir():
        return removed
    for p in sorted(cache_root.iterdir()):
        m = TEMP_RE.fullmatch(p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        if _owner_gone(m["host"], int(m["pid"]), p.stat().st_mtime):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p that returns the dirs it created (outermost first), so a failure can undo it."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    if not path.is_dir():
        raise UserError(f"{path}: is not a directory (cannot hold the dataset cache)")
    created = []
    for d in reversed(missing):
        d.mkdir()
        created.append(d)
    return created


def _check_arrays(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for split, (images, labels) in splits.items():
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{split} images must be uint8 (N, H, W, C), got {images.dtype} "
                             f"{images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{split}: {labels.shape} labels for {images.shape[0]} images")


def _save(path: Path, arr: np.ndarray) -> dict:
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename publishes it
    return file_info(path, arr.shape, arr.dtype)


def file_info(path: Path, shape, dtype) -> dict:
    """The manifest entry of a written array: the one full hash is taken here, at prepare."""
    size = path.stat().st_size
    return {"shape": list(shape), "dtype": str(dtype), "bytes": size,
            "sha256": sha256_file(path), "quick_sha256": quick_sha256(path, size)}


def _fill(tmp: Path, out_dir: Path, splits: dict, classes: list[str], meta: dict) -> dict:
    """Every array and the manifest into `tmp`; an OSError names the file it was writing."""
    files, name = {}, MANIFEST
    try:
        for split, (images, labels) in splits.items():
            for kind, arr in (("images", images), ("labels", labels.astype(np.int64))):
                name = f"{split}_{kind}.npy"
                files[name] = _save(tmp / name, np.ascontiguousarray(arr))
        name = MANIFEST
        manifest = build_manifest({s: a[0].shape for s, a in splits.items()}, classes, meta,
                                  files, channel_hist(splits["train"][0]))
        with open(tmp / MANIFEST, "w") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UserError(f"{out_dir / name}: cannot write the dataset cache ({reason(exc)}); "
                        "nothing was changed") from None
    return manifest


def build_manifest(shapes: dict, classes: list[str], meta: dict, files: dict,
                   hist: np.ndarray) -> dict:
    """The manifest of a cache: `shapes` maps split -> images shape, `hist` is the training
    split's channel_hist (per-channel mean/std for input normalisation)."""
    mean, std = stats_from_hist(hist)
    train = shapes["train"]
    manifest = {
        "format_version": FORMAT_VERSION, **meta,
        "image_size": int(train[1]), "channels": int(train[3]),
        "num_classes": len(classes), "classes": list(classes),
        "counts": {s: int(shapes[s][0]) for s in shapes},
        "mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
        "files": files,
    }
    manifest[SELF_KEY] = manifest_digest(manifest)
    return manifest


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp dir into place; the previous cache survives until then."""
    os.chmod(tmp, 0o755)  # mkdtemp makes 0o700
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{host_tag()}-{os.getpid()}-",
                                dir=out_dir.parent))
    old.rmdir()  # a unique free name that clean_stale_temps recognises
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError:
        old.rename(out_dir)  # put the previous cache back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write(out_dir: Path, splits: dict, classes: list[str], meta: dict) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{host_tag()}-{os.getpid()}-",
                                dir=out_dir.parent))
    try:
        manifest = _fill(tmp, out_dir, splits, classes, meta)
        swap_in(tmp, out_dir)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def undo(out_dir: Path, created: list[Path], before: os.stat_result | None) -> None:
    """After a failed write: remove the parent dirs this call created, or give the existing
    parent back its timestamps, since its content is as before (a refused prepare changes
    nothing that a tool watching mtimes could see)."""
    if not out_dir.exists():
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break
    if before is not None:
        with contextlib.suppress(OSError):
            os.utime(out_dir.parent, ns=(before.st_atime_ns, before.st_mtime_ns))


def write_cache(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                classes: list[str], meta: dict) -> dict:
    """Write all arrays and the manifest into a temp dir, then swap it in: never half-written.
    On any failure the temp dir and the parent dirs this call created are removed again."""
    out_dir = Path(out_dir)
    _check_arrays(splits)
    try:
        created = make_dirs(out_dir.parent)
    except OSError as exc:
        raise UserError(f"{exc.filename or out_dir.parent}: cannot create the cache folder "
                        f"({reason(exc)})") from None
    before = None
    try:
        stale = clean_stale_temps(out_dir.parent)
        for p in stale:
            print(f"note: removed {p} (left by a killed `pixbench data prepare`)", file=sys.stderr)
        before = None if created or stale else out_dir.parent.stat()
        return _write(out_dir, splits, classes, meta)
    except BaseException as exc:
        undo(out_dir, created, before)
        if isinstance(exc, OSError):  # mkdtemp or the renames; _fill names its own files
            raise UserError(f"{exc.filename or out_dir}: cannot write the dataset cache "
                            f"({reason(exc)}); nothing was changed") from None
        raise


# ------------------------------------------------------------------------------------ reading


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{path}: corrupt manifest ({why}); re-run `pixbench data prepare`")


def _check_structure(path: Path, m: dict) -> None:
    """Fields the loaders index, consistent with each other: a forged or buggy manifest gets a
    one-line error here instead of a KeyError later."""
    try:
        files = m["files"]
        if set(files) != set(FILES):
            raise _corrupt(path, f"files {sorted(files)} are not {sorted(FILES)}")
        for name, info in files.items():
            for key in ("shape", "dtype", "bytes", "sha256", "quick_sha256"):
                if key not in info:
                    raise _corrupt(path, f"files.{name}.{key} is missing")
        c, size = int(m["channels"]), int(m["image_size"])
        for s in SPLITS:
            shape = files[f"{s}_images.npy"]["shape"]
            if shape != [int(m["counts"][s]), size, size, c]:
                raise _corrupt(path, f"{s}_images.npy shape {shape} disagrees with counts.{s}, "
                                     "image_size or channels")
            if files[f"{s}_labels.npy"]["shape"] != [shape[0]]:
                raise _corrupt(path, f"{s}_labels.npy shape disagrees with counts.{s}")
        if len(m["mean"]) != c or len(m["std"]) != c or int(m["num_classes"]) != len(m["classes"]):
            raise _corrupt(path, "mean/std length or num_classes disagrees with the rest")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _corrupt(path, f"missing or malformed field {exc}") from None


def read_manifest(cache_dir: Path) -> dict:
    """The manifest, refused unless its checksum matches its content."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"dataset cache not found: {path} (run `pixbench data prepare`)")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the manifest ({reason(exc)})") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _corrupt(path, exc.__class__.__name__) from None
    if not isinstance(manifest, dict):
        raise _corrupt(path, "not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: cache format {manifest.get('format_version')} is not "
                        f"{FORMAT_VERSION}; re-run `pixbench data prepare`")
    if manifest.get(SELF_KEY) != manifest_digest(manifest):
        raise UserError(f"{path}: manifest content does not match its {SELF_KEY} (edited by "
                        "hand?); re-run `pixbench data prepare`")
    _check_structure(path, manifest)
    return manifest


def _check_file(path: Path, info: dict, verify: bool, full: bool) -> None:
    if not path.is_file():
        raise UserError(f"dataset cache file missing: {path}")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise UserError(f"{path}: {size} bytes, the manifest says {info['bytes']} (truncated or "
                        "replaced; re-run `pixbench data prepare`)")
    if not verify:
        return
    try:
        ok = (sha256_file(path) == info["sha256"]) if full else \
            (quick_sha256(path, size) == info["quick_sha256"])
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({reason(exc)})") from None
    if not ok:
        raise UserError(f"{path}: sha256 does not match {path.parent / MANIFEST} (corrupt cache; "
                        "re-run `pixbench data prepare`)")


def load_cache(cache_dir: Path, verify: bool = True, full: bool = False) -> CachedDataset:
    """Memory-map a cache after checking it against its manifest: sizes, dtypes and shapes
    always; with verify, the quick hash (whole file when small); with full, every byte."""
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    arrays = {}
    for name, info in manifest["files"].items():
        path = cache_dir / name
        _check_file(path, info, verify, full)
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise UserError(f"{path}: unreadable array ({exc})") from None
        if list(arr.shape) != info["shape"] or str(arr.dtype) != FILES[name]:
            raise UserError(f"{path}: {arr.dtype} {list(arr.shape)} is not the manifest's "
                            f"{FILES[name]} {info['shape']}")
        arrays[name[:-4]] = arr
    return CachedDataset(arrays["train_images"], arrays["train_labels"], arrays["val_images"],
                         arrays["val_labels"], manifest)


def verify_cache(cache_dir: Path) -> dict:
    """Full check of every byte (for a `pixbench data verify`); returns the manifest."""
    return load_cache(cache_dir, verify=True, full=True).manifest
