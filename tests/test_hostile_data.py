"""Hostile data: broken image trees, IDX and CIFAR files, an unwritable or full disk, and
tampered caches. Every case is one CLI call refused through tests/hostile.py's harness: exit
code != 0, one stderr line naming the file or field, no traceback, nothing written or changed.
OS conditions a root test process cannot create (permission denied, disk full, EIO) are
simulated by monkeypatching the call that would fail."""

from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_split, write_params
from hostile import assert_refused, run_cli
from test_imagefolder import bomb_png
from pixbench.data import cache, sources, stream

PREPARE = ["data", "prepare"]
CLASSIFY = ["classify", "run", "--patch", "2"]
RNG = np.random.default_rng(0)


def _image_bytes(fmt: str, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _fail_for(mp, owner, name: str, exc: OSError, match=lambda *a, **k: True, nth: int = 1,
              before=None) -> None:
    """From the nth call of owner.name whose args `match` on, raise exc (after before(*args),
    e.g. a half-written file); call through otherwise."""
    real, calls = getattr(owner, name), []

    def fake(*args, **kwargs):
        if match(*args, **kwargs):
            calls.append(1)
            if len(calls) >= nth:
                before and before(*args)
                raise exc
        return real(*args, **kwargs)
    mp.setattr(owner, name, fake)


def _denied(path=None) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", *([str(path)] if path else []))


def _png(path: Path) -> None:
    path.write_bytes(_image_bytes("PNG", 8))


@pytest.fixture
def ctx(workdir, tiny_params, monkeypatch):
    """workdir + raw data root with a good 2-class ImageFolder tree in raw/imgs (profile
    `tiny` points at it); cases mutate ctx.params, and the tree or the environment."""
    raw = workdir / "raw"
    for d in (raw / "imgs" / split / cls for split in ("train", "val") for cls in "ab"):
        d.mkdir(parents=True)
        _png(d / "0.png")
    monkeypatch.setenv("PIXBENCH_DATA_ROOT", str(raw))
    tiny_params["profiles"]["tiny"]["data"] = {"source": "imagefolder", "image_size": 8,
                                               "root": "imgs", "allow_download": False,
                                               "skip_corrupt": False, "channels": "auto", "fast_decode": None}
    return SimpleNamespace(work=workdir, raw=raw, f=raw / "imgs", mp=monkeypatch,
                           params=tiny_params, data=tiny_params["profiles"]["tiny"]["data"])


def _refused(ctx, capsys, names: str) -> None:
    write_params(ctx.work / "params.yaml", ctx.params)
    assert_refused(PREPARE, names, ctx.work, ctx.mp, capsys)


def test_the_good_tree_prepares(ctx, capsys):
    write_params(ctx.work / "params.yaml", ctx.params)
    code, out, err = run_cli(PREPARE, ctx.mp, capsys)
    assert code == 0, err
    assert json.loads(out)["counts"] == {"train": 2, "val": 2}
    assert cache.load_cache(ctx.work / "data" / "tiny").channels == 3


# ------------------------------------------------------------------------------- ImageFolder

def _non_utf8_class(c):
    for split in ("train", "val"):
        d = os.fsencode(c.f / split) + b"/caf\xe9"
        os.mkdir(d)
        _png(Path(os.fsdecode(d + b"/0.png")))


def _bad_zlib_png(c):
    raw = bytearray(_image_bytes("PNG", 16))
    i = raw.index(b"IDAT") + 4
    raw[i:i + 2] = b"\xff\xff"  # zlib header check fails
    (c.f / "train/a/z.png").write_bytes(bytes(raw))


FOLDER_CASES = {
    "truncated-jpeg": (lambda c: (c.f / "train/a/t.jpg").write_bytes(_image_bytes("JPEG")[:400]),
                       "train/a/t.jpg"),
    "truncated-png": (lambda c: (c.f / "train/b/t.png").write_bytes(_image_bytes("PNG")[:900]),
                      "train/b/t.png"),
    "zero-byte-file": (lambda c: (c.f / "val/a/z.jpg").write_bytes(b""), "val/a/z.jpg"),
    "text-named-jpg": (lambda c: (c.f / "val/b/readme.jpg").write_text("hello"), "val/b/readme.jpg"),
    "png-bad-zlib": (_bad_zlib_png, "train/a/z.png"),
    "bomb-over-limit": (lambda c: (c.f / "train/a/bomb.png").write_bytes(bomb_png(10_000, 10_000)),
                        "train/a/bomb.png"),
    "bomb-over-2x-limit": (lambda c: (c.f / "val/a/big.png").write_bytes(bomb_png(20_000, 20_000)),
                           "val/a/big.png"),
    "float-tiff": (lambda c: Image.fromarray(np.zeros((4, 4), np.float32)).save(c.f / "train/a/f.tif"),
                   "train/a/f.tif"),
    "broken-symlink": (lambda c: (c.f / "train/a/gone.png").symlink_to(c.raw / "nowhere.png"),
                       "train/a/gone.png"),
    "two-bad-files": (lambda c: [(c.f / f"train/{k}/1.jpg").write_bytes(b"") for k in "ab"],
                      "train/a/1.jpg: cannot decode image"),
    "image-permission-denied": (lambda c: (_png(c.f / "train/a/locked.png"), _fail_for(
        c.mp, Image, "open", _denied(), lambda p, *a: str(p).endswith("locked.png"))),
        "train/a/locked.png: cannot decode image (Permission denied)"),
    "class-permission-denied": (lambda c: _fail_for(
        c.mp, Path, "rglob", _denied(c.f / "train/b"), lambda self, *a: self.name == "b"),
        "train/b: cannot read (Permission denied)"),
    "empty-class": (lambda c: [(c.f / s / "zebra").mkdir() for s in ("train", "val")],
                    "class folders without image files: zebra"),
    "class-without-images": (lambda c: [(c.f / s / "zebra").mkdir() or
                                        (c.f / s / "zebra" / "notes.txt").write_text("x")
                                        for s in ("train", "val")],
                             "class folders without image files: zebra"),
    "class-only-in-train": (lambda c: [(c.f / "train/zebra").mkdir(), _png(c.f / "train/zebra/0.png")],
                            "only in train/: zebra"),
    "class-only-in-val": (lambda c: shutil.move(c.f / "train/b", c.f / "train/yak"),
                          "only in train/: yak; only in val/: b"),
    "non-utf8-class-name": (_non_utf8_class, "not valid UTF-8: caf\\xe9"),
    "missing-train": (lambda c: shutil.rmtree(c.f / "train"), "imgs/train"),
    "missing-val": (lambda c: shutil.rmtree(c.f / "val"), "imgs/val"),
    "no-class-folders": (lambda c: [shutil.rmtree(c.f / "train"), (c.f / "train").mkdir(),
                                    _png(c.f / "train/0.png")], "imgs/train: no class folders"),
    "root-missing": (lambda c: shutil.rmtree(c.f), "imgs does not exist"),
    "root-is-a-file": (lambda c: [shutil.rmtree(c.f), c.f.write_text("x")], "imgs is not a directory"),
    "root-null": (lambda c: c.data.update(root=None), "data.root must name"),
    "root-relative-without-data-root": (lambda c: c.mp.delenv("PIXBENCH_DATA_ROOT"),
                                        "PIXBENCH_DATA_ROOT is not set"),
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_hostile_image_folder(case, ctx, capsys):
    mutate, names = FOLDER_CASES[case]
    mutate(ctx)
    _refused(ctx, capsys, names)


# ----------------------------------------------------------------------------- Fashion-MNIST

def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) \
        + arr.astype(np.uint8).tobytes()


@pytest.fixture
def fmnist(ctx):
    """ctx with source fashion_mnist over generated IDX files whose hashes the loader expects;
    ctx.put(stem, raw) replaces one file (and its expected hash, unless rehash=False)."""
    d, hashes = ctx.raw / "fashion-mnist", {}
    d.mkdir()

    def put(stem: str, raw: bytes, rehash: bool = True, gz: bool = True) -> None:
        if rehash:
            hashes[stem] = hashlib.sha256(raw).hexdigest()
        (d / f"{stem}.gz").write_bytes(gzip.compress(raw) if gz else raw)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images, labels = synthetic_split(n, 28, 10, 1)
        put(f"{prefix}-images-idx3-ubyte", _idx(images[..., 0]))
        put(f"{prefix}-labels-idx1-ubyte", _idx(labels))
    ctx.mp.setattr(sources, "FASHION_MNIST_FILES", hashes)
    ctx.mp.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", ctx.work / "no-debian")
    ctx.mp.setattr(sources, "DOWNLOAD_DIR", ctx.work / "no-download")
    ctx.data.update(source="fashion_mnist", root=None)
    ctx.put, ctx.hashes, ctx.d = put, hashes, d
    return ctx


IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
FMNIST_CASES = {
    "truncated-gzip": (lambda c: (c.d / f"{IMAGES}.gz").write_bytes(
        (c.d / f"{IMAGES}.gz").read_bytes()[:300]), f"{IMAGES}.gz: cannot read (truncated"),
    "not-gzip": (lambda c: c.put(LABELS, _idx(np.zeros(40)), gz=False), "not a gzip file"),
    "bad-magic": (lambda c: c.put(LABELS, b"\0\0\x09\x01" + _idx(np.zeros(40))[4:]),
                  f"{LABELS}.gz: not a uint8 IDX file"),
    "wrong-ndim": (lambda c: c.put(IMAGES, _idx(np.zeros((40, 784)))),
                   f"{IMAGES}.gz: IDX file has 2 dimensions"),
    "truncated-idx": (lambda c: c.put(IMAGES, _idx(np.zeros((40, 28, 28)))[:-10]),
                      f"{IMAGES}.gz: truncated IDX file"),
    "oversized-idx": (lambda c: c.put(LABELS, _idx(np.zeros(40)) + b"\0"), "oversized IDX file"),
    "count-mismatch": (lambda c: c.put(LABELS, _idx(np.zeros(39))), f"{LABELS}.gz: 39 labels"),
    "label-out-of-range": (lambda c: c.put(LABELS, _idx(np.full(40, 12))), "label 12 is not"),
    "checksum-mismatch": (lambda c: c.hashes.update({IMAGES: "0" * 64}),
                          f"{IMAGES}.gz: sha256 of decompressed bytes"),
    "missing-file": (lambda c: (c.d / "t10k-images-idx3-ubyte.gz").unlink(),
                     "t10k-images-idx3-ubyte(.gz) not found"),
    "permission-denied": (lambda c: _fail_for(c.mp, Path, "read_bytes", _denied(),
                                              lambda self: self.name.startswith("t10k-labels")),
                          "t10k-labels-idx1-ubyte.gz: cannot read (Permission denied)"),
}


@pytest.mark.parametrize("case", FMNIST_CASES)
def test_hostile_fashion_mnist(case, fmnist, capsys):
    mutate, names = FMNIST_CASES[case]
    mutate(fmnist)
    _refused(fmnist, capsys, names)


# ------------------------------------------------------------------------------------- CIFAR

@pytest.fixture
def cifar(ctx):
    base = ctx.raw / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": RNG.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"k{i}" for i in range(10)]}))
    ctx.data.update(source="cifar10", root=None)
    ctx.base = base
    return ctx


def _trust_md5(c):
    """torchvision checks the real files' md5s; these fakes stand in for their layout only."""
    from torchvision.datasets import CIFAR10, cifar

    c.mp.setattr(CIFAR10, "_check_integrity", lambda self: True)
    c.mp.setattr(cifar, "check_integrity", lambda *a, **k: True)


def _truncated_tar_offline(c):
    shutil.rmtree(c.base)
    (c.raw / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    c.data.update(allow_download=True)
    _fail_for(c.mp, urllib.request, "urlopen", urllib.error.URLError("offline"))


CIFAR_CASES = {
    "truncated-pickle": (lambda c: (_trust_md5(c), (c.base / "data_batch_3").write_bytes(
        (c.base / "data_batch_3").read_bytes()[:100])),
        "data_batch_3: cannot read (UnpicklingError: pickle data was truncated"),
    "not-a-pickle": (lambda c: (_trust_md5(c), (c.base / "test_batch").write_text("garbage")),
                     "test_batch: cannot read"),
    "pickle-of-wrong-type": (lambda c: (_trust_md5(c), (c.base / "data_batch_2").write_bytes(
        pickle.dumps([1, 2]))), "data_batch_2: not a CIFAR batch"),
    "batch-permission-denied": (lambda c: (_trust_md5(c), _fail_for(
        c.mp, builtins, "open", _denied(c.base / "data_batch_2"),
        lambda p, *a, **k: str(p).endswith("data_batch_2"))),
        "data_batch_2: cannot read (Permission denied)"),
    "md5-mismatch": (lambda c: None, "data_batch_1: md5 does not match"),
    "missing-batch": (lambda c: (c.base / "data_batch_1").unlink(), "data_batch_1: missing"),
    "truncated-tar-offline": (_truncated_tar_offline, "cifar-10-python.tar.gz: md5 does not match"),
    "no-data-root": (lambda c: c.mp.delenv("PIXBENCH_DATA_ROOT"), "needs PIXBENCH_DATA_ROOT"),
}


@pytest.mark.parametrize("case", CIFAR_CASES)
def test_hostile_cifar(case, cifar, capsys):
    mutate, names = CIFAR_CASES[case]
    mutate(cifar)
    _refused(cifar, capsys, names)


# ------------------------------------------------------------------------- writing the cache

def _prepared(c, capsys):
    """A good cache already in place: a failed re-prepare must leave it as it was."""
    write_params(c.work / "params.yaml", c.params)
    assert run_cli(PREPARE, c.mp, capsys)[0] == 0


def _disk_full(c, nth: int) -> None:
    """The nth preallocation of an image array finds the disk full."""
    _fail_for(c.mp, stream.os, "posix_fallocate",
              OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), nth=nth)


def _eio_on(c, name: str, where: str = "atomic_write_bytes") -> None:
    """EIO while writing (or syncing) the cache file `name`."""
    _fail_for(c.mp, stream, where, OSError(errno.EIO, os.strerror(errno.EIO)),
              lambda path, *a: Path(path).name == name)


def _read_only(c, path: Path) -> None:
    """chmod 0o500 does not stop root: os.access answers as it would for a user."""
    path.mkdir()
    real = os.access
    c.mp.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == path
                  else real(p, mode, *a, **k))


def _file_at(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file, not a folder")


WRITE_CASES = {
    "disk-full": (lambda c, cap: _disk_full(c, 1),
                  "train_images.npy: cannot write the dataset cache (No space left on device)"),
    "disk-full-over-old-cache": (lambda c, cap: (_prepared(c, cap), _disk_full(c, 2)),
                                 "val_images.npy: cannot write the dataset cache (No space"),
    "eio-writing-manifest": (lambda c, cap: _eio_on(c, "manifest.json"),
                             "manifest.json: cannot write"),
    "eio-over-old-cache": (lambda c, cap: (_prepared(c, cap), _eio_on(c, "train_labels.npy",
                                                                      "_fsync")),
                           "train_labels.npy: cannot write"),
    "eio-writing-a-chunk-marker": (lambda c, cap: _eio_on(c, "val-0000000.json"),
                                   "cannot write the dataset cache (Input/output error)"),
    "temp-dir-permission-denied": (lambda c, cap: _fail_for(
        c.mp, cache.tempfile, "mkdtemp", _denied(c.work / "data")),
        "data: cannot write the dataset cache (Permission denied)"),
    "cache-root-not-creatable": (lambda c, cap: _fail_for(
        c.mp, Path, "mkdir", _denied(c.work / "data"), lambda self, *a: self.name == "data"),
        "data: cannot create the cache folder (Permission denied)"),
    "cache-root-read-only": (lambda c, cap: _read_only(c, c.work / "data"), "data: not writable"),
    "rename-fails-over-old-cache": (lambda c, cap: (_prepared(c, cap), _fail_for(
        c.mp, Path, "rename", OSError(errno.EBUSY, os.strerror(errno.EBUSY)),
        lambda self, *a: self.name.startswith(".tiny.tmp-"))),
        "cannot write the dataset cache (Device or resource busy)"),
    "swap-in-fails-over-old-cache": (lambda c, cap: (_prepared(c, cap), _fail_for(
        c.mp, Path, "rename", OSError(errno.EBUSY, os.strerror(errno.EBUSY)),
        lambda self, *a: self.name.startswith(".tiny.work-"))),
        "cannot write the dataset cache (Device or resource busy)"),
    "cache-root-is-a-file": (lambda c, cap: _file_at(c.work / "data"), "data: is not a directory"),
    "cache-path-is-a-file": (lambda c, cap: _file_at(c.work / "data" / "tiny"),
                             "tiny: exists and is not a dataset cache folder"),
}


@pytest.mark.parametrize("case", WRITE_CASES)
def test_hostile_cache_write(case, ctx, capsys):
    mutate, names = WRITE_CASES[case]
    mutate(ctx, capsys)
    _refused(ctx, capsys, names)


# -------------------------------------------------------------------------- loading the cache

def _edit_manifest(c, edit, rehash: bool = False) -> None:
    path = c.cache / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    if rehash:  # a forger who recomputes the checksum still meets the consistency checks
        m["manifest_sha256"] = cache.manifest_digest(m)
    path.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


LOAD_CASES = {
    "manifest-mean-edited": (lambda c: _edit_manifest(c, lambda m: m["mean"].__setitem__(0, 0.5)),
                             "manifest.json: manifest content does not match"),
    "manifest-counts-edited": (lambda c: _edit_manifest(c, lambda m: m["counts"].update(train=9)),
                               "manifest.json: manifest content does not match"),
    "manifest-checksum-removed": (lambda c: _edit_manifest(c, lambda m: m.pop("manifest_sha256")),
                                  "manifest.json: manifest content does not match"),
    "manifest-forged-shape": (lambda c: _edit_manifest(
        c, lambda m: m["files"]["train_images.npy"].update(shape=[9, 8, 8, 1]), rehash=True),
        "manifest.json: corrupt manifest (train_images.npy shape"),
    "manifest-forged-missing-field": (lambda c: _edit_manifest(
        c, lambda m: m.pop("channels"), rehash=True), "manifest.json: corrupt manifest"),
    "manifest-old-format": (lambda c: _edit_manifest(c, lambda m: m.update(format_version=1)),
                            "manifest.json: cache format 1 is not 2"),
    "manifest-not-json": (lambda c: (c.cache / "manifest.json").write_text("{not json"),
                          "manifest.json: corrupt manifest (JSONDecodeError)"),
    "manifest-bad-encoding": (lambda c: (c.cache / "manifest.json").write_bytes(b'{"a": "\xff"}'),
                              "manifest.json: corrupt manifest (UnicodeDecodeError)"),
    "manifest-not-an-object": (lambda c: (c.cache / "manifest.json").write_text("[]"),
                               "manifest.json: corrupt manifest (not a JSON object)"),
    "manifest-unreadable": (lambda c: _fail_for(c.mp, Path, "read_bytes", _denied(),
                                                lambda self: self.name == "manifest.json"),
                            "manifest.json: cannot read the manifest (Permission denied)"),
    "cache-missing": (lambda c: shutil.rmtree(c.cache), "dataset cache not found"),
    "array-missing": (lambda c: (c.cache / "train_labels.npy").unlink(),
                      "data/tiny/train_labels.npy"),
    "array-truncated": (lambda c: os.truncate(c.cache / "val_images.npy", 200),
                        "val_images.npy: 200 bytes, the manifest says"),
    "array-byte-changed": (lambda c: (c.cache / "val_labels.npy").write_bytes(  # the high byte
        (c.cache / "val_labels.npy").read_bytes()[:-1] + b"\x07"),  # of a label: was 0
        "val_labels.npy: sha256 does not match"),
    "array-replaced": (lambda c: shutil.copy(c.cache / "val_labels.npy",
                                             c.cache / "train_labels.npy"),
                       "train_labels.npy: 640 bytes, the manifest says 2176"),
}


@pytest.mark.parametrize("case", LOAD_CASES)
def test_hostile_cache_load(case, tiny_project, monkeypatch, capsys):
    c = SimpleNamespace(work=tiny_project.parent, mp=monkeypatch,
                        cache=tiny_project.parent / "data" / "tiny")
    LOAD_CASES[case][0](c)
    assert_refused(CLASSIFY, LOAD_CASES[case][1], c.work, monkeypatch, capsys)

