"""Data sources, the uint8 cache and augmentation, on tiny generated fixtures (no network)."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest
import torch

from conftest import synthetic_split
from pixbench.config import AugmentConfig, DataConfig
from pixbench.data import sources
from pixbench.data.augment import augment_batch
from pixbench.data.cache import load_cache, write_cache
from pixbench.data.prepare import prepare, resize_uint8
from pixbench.errors import UserError


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.fixture
def fake_fmnist(tmp_path, monkeypatch):
    """IDX files in $DATA_ROOT/fashion-mnist whose checksums the loader is told to expect."""
    root = tmp_path / "raw"
    (root / "fashion-mnist").mkdir(parents=True)
    hashes = {}
    for prefix, n, seed in (("train", 40, 1), ("t10k", 20, 2)):
        images, labels = synthetic_split(n, 28, 10, seed)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images[..., 0]),
                          (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = _idx_bytes(arr)
            hashes[stem] = hashlib.sha256(raw).hexdigest()
            (root / "fashion-mnist" / f"{stem}.gz").write_bytes(gzip.compress(raw))
    monkeypatch.setattr(sources, "FASHION_MNIST_FILES", hashes)
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(sources, "DOWNLOAD_DIR", tmp_path / "dl")
    return root


def test_fashion_mnist_from_data_root(fake_fmnist):
    split = sources.load_fashion_mnist("train", fake_fmnist, allow_download=False)
    assert split.images.shape == (40, 28, 28, 1) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int64 and len(split.classes) == 10


def test_checksum_mismatch_names_the_file(fake_fmnist, monkeypatch):
    bad = dict(sources.FASHION_MNIST_FILES, **{"t10k-labels-idx1-ubyte": "0" * 64})
    monkeypatch.setattr(sources, "FASHION_MNIST_FILES", bad)
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.gz: sha256 of decompressed"):
        sources.load_fashion_mnist("val", fake_fmnist, allow_download=False)


def test_missing_dataset_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "none")
    monkeypatch.setattr(sources, "DOWNLOAD_DIR", tmp_path / "dl")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*not found") as exc:
        sources.load_fashion_mnist("train", tmp_path, allow_download=False)
    assert "\n" not in str(exc.value)


def test_truncated_idx_is_rejected():
    raw = _idx_bytes(np.zeros((4, 3, 3)))[:-5]
    with pytest.raises(UserError, match="truncated"):
        sources._read_idx(raw, "x")


def test_prepare_resizes_and_caches(fake_fmnist, tmp_path):
    cfg = DataConfig(source="fashion_mnist", image_size=14, root=None, allow_download=False,
                     skip_corrupt=False, channels="auto", fast_decode=None)
    manifest = prepare(cfg, tmp_path / "cache", fake_fmnist)
    ds = load_cache(tmp_path / "cache")
    assert ds.train_images.shape == (40, 14, 14, 1) and ds.val_images.shape == (20, 14, 14, 1)
    assert manifest["classes"][0] == "T-shirt/top" and manifest["spec"] == cfg.model_dump()
    assert 0 < ds.mean[0] < 1 and ds.std[0] > 0


def test_resize_is_identity_at_same_size_and_antialiased():
    img = np.zeros((1, 8, 8, 1), np.uint8)
    img[0, ::2, ::2] = 255  # checkerboard-ish: antialiasing averages it to a flat grey
    assert resize_uint8(img, 8) is img
    small = resize_uint8(img, 4)
    assert small.shape == (1, 4, 4, 1) and abs(int(small.mean()) - 64) <= 2


def test_corrupt_or_missing_cache_files(tmp_path):
    splits = {"train": synthetic_split(16, 8, 4, 1), "val": synthetic_split(8, 8, 4, 2)}
    write_cache(tmp_path / "c", splits, ["a", "b", "c", "d"], {"source": "x", "spec": {}})
    assert load_cache(tmp_path / "c").train_images.shape == (16, 8, 8, 1)
    with open(tmp_path / "c" / "val_labels.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x07")
    with pytest.raises(UserError, match=r"val_labels.npy: sha256 does not match"):
        load_cache(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt manifest"):
        load_cache(tmp_path / "c")
    with pytest.raises(UserError, match="run `pixbench data prepare`"):
        load_cache(tmp_path / "absent")


def test_cache_write_is_all_or_nothing(tmp_path):
    bad = {"train": (np.zeros((4, 8, 8, 1), np.float32), np.zeros(4)), "val": synthetic_split(4, 8, 2, 1)}
    with pytest.raises(ValueError):
        write_cache(tmp_path / "c", bad, ["a", "b"], {})
    assert list(tmp_path.iterdir()) == []


def test_image_folder_crop_resize(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                im = Image.new("RGB", (40 + 10 * i, 20), (0, 255, 0))  # green margins
                im.paste(Image.new("RGB", (20, 20), color), ((40 + 10 * i - 20) // 2, 0))
                im.save(d / f"{i}.png")
    def cfg(root):
        return DataConfig(source="imagefolder", image_size=8, root=str(root), allow_download=False,
                          skip_corrupt=False, channels="auto", fast_decode=None)

    prepare(cfg(tmp_path / "imgs"), tmp_path / "c", None)
    ds = load_cache(tmp_path / "c")
    assert ds.train_images.shape == (6, 8, 8, 3) and ds.classes == ["cat", "dog"]
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.train_images[0, :, :, 0].min() > 200 and ds.train_images[3, :, :, 2].min() > 200
    with pytest.raises(UserError, match="nothing does not exist"):
        prepare(cfg(tmp_path / "nothing"), tmp_path / "c2", None)
    with pytest.raises(UserError, match="ImageFolder split not found"):
        prepare(cfg(tmp_path / "imgs" / "train"), tmp_path / "c3", None)


def test_cifar_from_local_copy(tmp_path, monkeypatch):
    from torchvision import datasets

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(batch))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"k{i}" for i in range(10)]}))
    from torchvision.datasets import cifar

    # torchvision checks the real files' md5s; these tiny fakes only stand in for their layout
    monkeypatch.setattr(datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    split = sources.load_cifar("cifar10", "train", tmp_path, allow_download=False)
    assert split.images.shape == (20, 32, 32, 3) and split.classes[0] == "k0"
    with pytest.raises(UserError, match="cifar-100-python/train: cannot read"):
        sources.load_cifar("cifar100", "train", tmp_path, allow_download=False)


def test_augmentation_is_seeded_and_shape_preserving():
    x = torch.rand(16, 3, 8, 8)
    cfg = AugmentConfig(hflip=True, crop_padding=2, rrc_scale_min=0.3, color_jitter=0.4, grayscale_p=0.5)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= a.min() and a.max() <= 1
    flip_only = augment_batch(x, AugmentConfig(hflip=True, crop_padding=0, rrc_scale_min=None,
                                           color_jitter=0.0, grayscale_p=0.0),
                          torch.Generator().manual_seed(0))
    flipped = [torch.equal(flip_only[i], x[i].flip(2)) for i in range(16)]
    kept = [torch.equal(flip_only[i], x[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def _small_cache(path, n=16):
    splits = {"train": synthetic_split(n, 8, 4, 1), "val": synthetic_split(8, 8, 4, 2)}
    return write_cache(path, splits, ["a", "b", "c", "d"], {"source": "x", "spec": {}}), splits


def test_manifest_checksums_itself_and_stats_match_numpy(tmp_path):
    from pixbench.data.cache import manifest_digest

    m, splits = _small_cache(tmp_path / "c")
    assert m["manifest_sha256"] == manifest_digest(m) and m["format_version"] == 2
    train = splits["train"][0].astype(np.float64) / 255.0  # the old whole-split computation
    assert m["mean"] == [round(float(v), 6) for v in train.mean(axis=(0, 1, 2))]
    assert m["std"] == [round(float(v), 6) for v in train.std(axis=(0, 1, 2))]
    assert m["files"]["train_images.npy"]["bytes"] == (tmp_path / "c" / "train_images.npy").stat().st_size


def test_quick_check_probes_big_files_and_full_check_reads_every_byte(tmp_path, monkeypatch):
    from pixbench.data import cache

    monkeypatch.setattr(cache, "FULL_HASH_MAX", 1024)  # train_images (16*64 B + header) is "big"
    monkeypatch.setattr(cache, "PROBE_BLOCKS", 3)
    monkeypatch.setattr(cache, "PROBE_BLOCK", 16)
    _small_cache(tmp_path / "c", n=64)
    path = tmp_path / "c" / "train_images.npy"
    size = path.stat().st_size
    with open(path, "r+b") as f:  # a byte between the probed blocks: only a full check sees it
        f.seek(size // 4)
        byte = f.read(1)
        f.seek(size // 4)
        f.write(bytes([byte[0] ^ 1]))
    load_cache(tmp_path / "c")
    with pytest.raises(UserError, match="train_images.npy: sha256 does not match"):
        cache.verify_cache(tmp_path / "c")
    with open(path, "r+b") as f:  # the last block is always probed
        f.seek(-1, 2)
        byte = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(UserError, match="train_images.npy: sha256 does not match"):
        load_cache(tmp_path / "c")


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from pixbench.data import cache
real = np.save
def save(f, arr, *a, **k):
    real(f, arr, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-prepare: no cleanup can run
cache.np.save = save
cache.write_cache(sys.argv[1], {"train": (np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2)),
                                "val": (np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2))}, ["a"], {})
"""


def test_temp_dirs_of_a_killed_prepare_are_cleaned_next_time(tmp_path, capsys):
    import os
    import subprocess
    import sys
    import time

    root = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root / "c")], env=env)
    assert proc.returncode == -9
    left = [p.name for p in root.iterdir()]
    assert len(left) == 1 and left[0].startswith(".c.tmp-") and not (root / "c").exists()
    from pixbench.data.cache import host_tag as _host

    alive = root / f".c.tmp-{_host()}-{os.getpid()}-abcd1234"  # a writer still running: kept
    old = root / f".other.old-{_host()}-{os.getpid()}-abcd1234"  # alive pid but 2 days old
    elsewhere = root / ".c.tmp-otherhost-1-abcd1234"  # another node's, recent: kept
    keep = [root / ".c.backup", root / "c.tmp-x-1-y", root / "mine"]  # not our pattern
    for d in [alive, old, elsewhere, *keep]:
        d.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    _small_cache(root / "c")
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(["c", alive.name, elsewhere.name] + [k.name for k in keep])
    assert capsys.readouterr().err.count("note: removed") == 2
    load_cache(root / "c")
