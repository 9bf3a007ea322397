"""The streaming ImageFolder prepare (data/stream.py, data/shards.py): the same bytes as a
plain in-memory decode, the same bytes after an interruption and resume, the same bytes when
sharded over array tasks and merged, fast decode as part of the cache identity, and the
cheap-on-load / full-on-demand verification."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from hostile import run_cli
from conftest import cache_bytes, imagefolder_cfg
from pixbench.config import DataConfig
from pixbench.data import shards, stream
from pixbench.data.cache import load_cache, verify_cache
from pixbench.data.prepare import decode_file, prepare
from pixbench.data.sources import scan_image_folder
from pixbench.errors import UserError

SIZE = 12


def _photo(rng, w: int, h: int) -> Image.Image:
    """Smooth, photo-like content (gradients + a blob), not noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    a = rng.uniform(40, 200, 3) + 50 * np.stack([xx, yy, xx * yy], -1) \
        + 40 * np.exp(-((xx - rng.random()) ** 2 + (yy - rng.random()) ** 2) * 20)[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.fixture
def tree(tmp_path):
    """3 classes, 40 train and 9 val JPEGs of varied sizes, one gray PNG, one CMYK JPEG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for split, n in (("train", 40), ("val", 9)):
        for i in range(n):
            d = root / split / f"c{i % 3}"
            d.mkdir(parents=True, exist_ok=True)
            _photo(rng, 60 + 7 * (i % 5), 50 + 3 * (i % 4)).save(d / f"{i:03d}.jpg", quality=90)
    _photo(rng, 30, 30).convert("L").save(root / "train" / "c0" / "gray.png")
    _photo(rng, 64, 48).convert("CMYK").save(root / "train" / "c1" / "cmyk.jpg")
    return root


def cfg(root, **kw) -> DataConfig:
    return imagefolder_cfg(root, SIZE, **kw)


_bytes = cache_bytes


def test_streamed_cache_equals_a_plain_in_memory_decode(tree, tmp_path, monkeypatch):
    """Bit-identical to what prepare did before streaming (decode every file, stack, one
    channel only when all gray), and exact statistics."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)  # 16-image chunks, 2 processes
    m = prepare(cfg(tree), tmp_path / "c", None, workers=2)
    ds = load_cache(tmp_path / "c")
    for split in ("train", "val"):
        fs = scan_image_folder(tree, split)
        ref = np.stack([np.broadcast_to(decode_file((f, SIZE))[0], (SIZE, SIZE, 3))
                        for f in fs.files])  # (N, S, S, 3)
        np.testing.assert_array_equal(getattr(ds, f"{split}_images"), ref)
        np.testing.assert_array_equal(getattr(ds, f"{split}_labels"), fs.labels)
    x = np.asarray(ds.train_images, dtype=np.float64) / 255
    np.testing.assert_allclose(m["mean"], x.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(m["std"], x.std(axis=(0, 1, 2)), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "tree"]  # no work dir left


def test_an_interrupted_prepare_resumes_to_the_same_bytes(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    prepare(cfg(tree), tmp_path / "ref", None, workers=1)
    real, calls = stream.decode_chunk, []

    def interrupted(job):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM's SystemExit: no refusal
        calls.append(job[1:3])
        return real(job)

    monkeypatch.setattr(stream, "decode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg(tree), tmp_path / "c", None, workers=1)
    work = [p for p in tmp_path.iterdir() if p.name.startswith(".c.work-")]
    assert len(work) == 1 and len(os.listdir(work[0] / "done")) == 2
    monkeypatch.setattr(stream, "decode_chunk", real)
    counted = []
    monkeypatch.setattr(stream, "decode_chunk", lambda job: counted.append(job[1:3]) or real(job))
    prepare(cfg(tree), tmp_path / "c", None, workers=1)
    assert not set(counted) & set(calls)  # the done chunks were not decoded again
    assert _bytes(tmp_path / "c") == _bytes(tmp_path / "ref")
    assert not work[0].exists()


def test_shards_and_merge_equal_one_local_prepare(tree, tmp_path, monkeypatch):
    """What the SLURM array runs, without SLURM: the plan, K shard tasks in any order, merge."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    prepare(cfg(tree), tmp_path / "ref", None, workers=1)
    work = stream.make_plan(cfg(tree), tmp_path / "c", tree)
    ids = stream.chunk_ids(stream.read_plan(work))
    parts = [stream.shard(ids, k, 3) for k in range(3)]
    assert sum(parts, []) == ids and all(parts)  # contiguous, disjoint, covering
    assert shards.pending_shards(work, 3) == [0, 1, 2]
    shards.ShardJob(str(work), 2, 3, 1)()
    with pytest.raises(UserError, match="chunks are not decoded"):
        shards.MergeJob(str(work), str(tmp_path / "c"), "prepare")()
    assert shards.pending_shards(work, 3) == [0, 1]
    for k in (1, 0):
        shards.ShardJob(str(work), k, 3, 2)()
    out = shards.MergeJob(str(work), str(tmp_path / "c"), "prepare")()
    assert out["counts"] == {"train": 42, "val": 9}
    assert _bytes(tmp_path / "c") == _bytes(tmp_path / "ref")


def test_fast_decode_is_close_and_part_of_the_cache_identity(tree, tmp_path):
    exact = prepare(cfg(tree, image_size=8), tmp_path / "a", None, workers=1)
    fast = prepare(cfg(tree, image_size=8, fast_decode=1.0), tmp_path / "b", None, workers=1)
    assert fast["spec"]["fast_decode"] == 1.0 and exact["spec"] != fast["spec"]
    a = np.asarray(load_cache(tmp_path / "a").train_images, dtype=np.int16)
    b = np.asarray(load_cache(tmp_path / "b").train_images, dtype=np.int16)
    diff = np.abs(a - b)
    png = [f.endswith(".png") for f in scan_image_folder(tree, "train").files].index(True)
    assert 0 < diff.mean() < 8 and (diff[png] == 0).all()  # a PNG is never drafted
    with pytest.raises(ValueError, match="fast_decode"):
        cfg(tree, fast_decode=0.5)


def test_truncation_is_caught_on_load_and_a_flipped_byte_by_the_full_check(tree, tmp_path):
    prepare(cfg(tree), tmp_path / "c", None, workers=1)
    path = tmp_path / "c" / "train_images.npy"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    load_cache(tmp_path / "c", verify=False)  # sizes and headers only: a flip passes
    with pytest.raises(UserError, match="train_images.npy: sha256 does not match"):
        verify_cache(tmp_path / "c")
    os.truncate(path, len(raw) - 1)
    with pytest.raises(UserError, match="train_images.npy: .* bytes, the manifest says"):
        load_cache(tmp_path / "c", verify=False)


def test_data_verify_cli(workdir, tiny_params, tree, monkeypatch, capsys):
    from conftest import write_params

    monkeypatch.setenv("PIXBENCH_DATA_ROOT", str(tree.parent))
    tiny_params["profiles"]["tiny"]["data"] = cfg("tree", image_size=8).model_dump()
    write_params(workdir / "params.yaml", tiny_params)
    code, out, err = run_cli(["data", "prepare", "--workers", "2"], monkeypatch, capsys)
    assert code == 0, err
    code, out, err = run_cli(["data", "verify"], monkeypatch, capsys)
    assert code == 0 and json.loads(out)["counts"] == {"train": 42, "val": 9}, err
    labels = workdir / "data" / "tiny" / "val_labels.npy"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x07")
    code, out, err = run_cli(["data", "verify"], monkeypatch, capsys)
    assert code != 0 and "val_labels.npy: sha256 does not match" in err


def test_merge_refuses_while_a_shards_chunk_is_missing_and_names_it(tree, tmp_path, monkeypatch):
    """The merge checks every chunk itself (SLURM's afterok is not relied on: issue 26): one
    line naming the shard and chunk, the work dir kept as it was, no cache written."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    work = stream.make_plan(cfg(tree), tmp_path / "c", tree)
    for k in range(3):
        shards.ShardJob(str(work), k, 3, 1)()
    ids = stream.chunk_ids(stream.read_plan(work))
    s, i = stream.shard(ids, 1, 3)[0]
    (work / stream.DONE / f"{s}-{i:07d}.json").unlink()  # shard 1 cancelled before this chunk
    before = sorted((p.relative_to(work), p.stat().st_size, p.stat().st_mtime_ns)
                    for p in work.rglob("*"))
    with pytest.raises(stream.Incomplete) as exc:
        shards.MergeJob(str(work), str(tmp_path / "c"), "prepare", 3)()
    msg = str(exc.value)
    assert "\n" not in msg and "shard 1 of 3: 1 of 4 chunks are not decoded" in msg, msg
    assert f"{s}-{i:07d}" in msg and "nothing was written" in msg, msg
    assert sorted((p.relative_to(work), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in work.rglob("*")) == before
    assert not (tmp_path / "c").exists()
    shards.ShardJob(str(work), 1, 3, 1)()  # the re-run finishes it
    assert shards.merge(work, 3)["counts"] == {"train": 42, "val": 9}
