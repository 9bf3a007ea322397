"""Memory of `pixbench data prepare` at scale (issue 26): a histogram without an int64 copy of
the chunk, a memory budget that caps the decode workers (never the bytes), chunks sized so
every worker of every shard has work (never the bytes either), and a plan that shards read in
slices."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from hostile import run_cli
from test_prepare_stream import _bytes, cfg, tree  # noqa: F401 - the tree fixture
from pixbench.data import prepare as prep, shards, stats, stream, workdir
from pixbench.data.prepare import prepare
from pixbench.data.sources import scan_image_folder
from pixbench.errors import UserError

IMAGENET = (1_281_167, 50_000)


def _reference_hist(images: np.ndarray) -> np.ndarray:
    x = images.reshape(-1, images.shape[3])
    return np.stack([np.bincount(x[:, k], minlength=256) for k in range(x.shape[1])])


@pytest.mark.parametrize("shape", [(5, 12, 12, 1), (0, 8, 8, 3), (3, 600, 700, 3), (9, 1, 1, 3)])
def test_histogram_is_exact_with_or_without_a_row_mask(shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    keep = np.arange(shape[0]) % 3 != 1
    np.testing.assert_array_equal(stats.channel_hist(images), _reference_hist(images))
    np.testing.assert_array_equal(stats.channel_hist(images, keep), _reference_hist(images[keep]))
    np.testing.assert_array_equal(stats.channel_hist(images[..., :1]),
                                  _reference_hist(np.ascontiguousarray(images[..., :1])))


def test_histogram_of_a_256px_chunk_allocates_megabytes_not_a_copy():
    """A 170-image 256px chunk (32 MiB): np.bincount on it whole made an 85 MiB int64 copy."""
    chunk = np.random.default_rng(1).integers(0, 256, (170, 256, 256, 3), dtype=np.uint8)
    keep = np.ones(170, dtype=bool)
    keep[7] = False
    tracemalloc.start()
    stats.channel_hist(chunk, keep)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_memory_budget_caps_the_workers_with_a_note_and_keeps_the_bytes(tree, tmp_path,
                                                                        monkeypatch, capsys):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)  # 16-image chunks: work for 2 processes
    prepare(cfg(tree), tmp_path / "two", None, workers=2)
    assert "note:" not in capsys.readouterr().err  # 2 workers fit this machine
    prepare(cfg(tree), tmp_path / "one", None, workers=2, mem_gb=0.01)
    err = capsys.readouterr().err
    assert "note: 1 decode workers, not 2: a memory budget of 0.01 GiB (--mem-gb)" in err, err
    assert _bytes(tmp_path / "one") == _bytes(tmp_path / "two")


def test_budget_defaults_to_the_slurm_jobs_memory(monkeypatch, capsys):
    per = prep.worker_peak_bytes(256, 3)
    assert 64 << 20 < per < 160 << 20  # measured 80 MiB per 256px worker (prepare.py)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "2048")  # --mem=2G
    monkeypatch.delenv("SLURM_MEM_PER_CPU", raising=False)
    assert prep.node_memory() == (2 << 30, "the SLURM job's --mem")
    fit = int(0.75 * (2 << 30)) // per
    assert prep.capped_workers(128, 256, 3) == fit
    assert f"{fit} decode workers, not 128" in capsys.readouterr().err
    assert prep.capped_workers(2, 256, 3) == 2  # under the budget: as asked, no note
    assert prep.capped_workers(2, 256, 3, mem_gb=1e-6) == 1  # never none
    assert "note" in capsys.readouterr().err


def test_mem_gb_flag(workdir, tiny_params, tree, monkeypatch, capsys):
    from conftest import write_params

    monkeypatch.setenv("PIXBENCH_DATA_ROOT", str(tree.parent))
    tiny_params["profiles"]["tiny"]["data"] = cfg("tree", image_size=8).model_dump()
    write_params(workdir / "params.yaml", tiny_params)
    code, out, err = run_cli(["data", "prepare", "--workers", "3", "--mem-gb", "0.1"],
                             monkeypatch, capsys)
    assert code == 0 and json.loads(out)["counts"] == {"train": 42, "val": 9}, err
    assert "not 3: a memory budget of 0.10 GiB (--mem-gb)" in err, err


@pytest.mark.parametrize("size,shards,workers", [(28, 16, 32), (28, 16, 128), (256, 16, 32),
                                                 (28, 1, 2), (64, 4, 8)])
def test_chunks_give_every_worker_of_every_shard_work(size, shards, workers):
    """At 28px 4096-image chunks made 326 chunks of ImageNet-1k: >= 186 of 16 x 32 workers
    idle. Now >= 4 chunks per worker of every shard where N allows, at most ~32 MiB each."""
    chunk = stream.chunk_len(size, 3, sum(IMAGENET), shards * workers)
    assert chunk == stream.chunk_len(size, 3, sum(IMAGENET), shards * workers)  # deterministic
    assert 16 <= chunk <= stream.chunk_len(size, 3) and chunk * size * size * 3 <= 32 << 20
    plan = {"chunk": chunk, "splits": {"train": {"shape": [IMAGENET[0]]},
                                       "val": {"shape": [IMAGENET[1]]}}}
    ids = stream.chunk_ids(plan)
    assert min(len(stream.shard(ids, k, shards)) for k in range(shards)) >= 4 * workers
    assert stream.chunk_len(size, 3, 0) == stream.chunk_len(size, 3)  # no N: the old cap


def test_chunking_never_changes_the_bytes_and_a_resume_keeps_the_plans_chunks(
        tree, tmp_path, monkeypatch):
    prepare(cfg(tree), tmp_path / "ref", None, workers=1)  # 16-image chunks (51 images)
    monkeypatch.setattr(stream, "CHUNKS_PER_WORKER", 1)
    work = stream.make_plan(cfg(tree), tmp_path / "c", tree, parts=1)
    assert stream.read_plan(work)["chunk"] == 51  # one chunk per split
    again = stream.make_plan(cfg(tree), tmp_path / "c", tree, parts=64)  # a resume, other workers
    assert again == work and stream.read_plan(again)["chunk"] == 51
    stream.decode_chunks(work, [("train", 0)], workers=1)
    stream.decode_chunks(work, None, workers=2)
    stream.finish(work)
    assert _bytes(tmp_path / "c") == _bytes(tmp_path / "ref")


def test_the_plan_is_read_in_slices_and_makes_no_image_arrays(tree, tmp_path):
    work = stream.make_plan(cfg(tree), tmp_path / "c", tree)
    assert not list(work.glob("*_images.npy"))  # made by the first decode, not the planner
    assert len((work / stream.PLAN).read_bytes()) < 2000  # the header: no file list
    for split in ("train", "val"):
        fs = scan_image_folder(tree, split)
        n = len(fs.files)
        assert workdir.paths(work, split, 0, n) == list(fs.files)
        assert workdir.paths(work, split, 3, 7) == list(fs.files[3:7])
        np.save(tmp_path / "ref.npy", fs.labels)
        assert (work / f"{split}_labels.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert shards.pending_shards(work, 2) == [0, 1]


@pytest.mark.parametrize("mutate,message", [
    (lambda t: (t / "val" / "c1").rename(t / "val" / ".c1"), "class folders differ"),
    (lambda t: [f.unlink() for f in (t / "train" / "c2").iterdir()],
     "class folders without image files: c2"),
    (lambda t: __import__("shutil").rmtree(t / "val"), "ImageFolder split not found"),
])
def test_the_streamed_scan_refuses_what_the_scan_refuses(tree, tmp_path, mutate, message):
    mutate(tree)
    with pytest.raises(UserError, match=message):
        stream.make_plan(cfg(tree), tmp_path / "c", tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no temp dir left


def test_each_shard_reserves_only_its_own_rows(tree, tmp_path, monkeypatch):
    """The submitting process reserves nothing (ImageNet-1k at 256px: 244 GiB); the first
    shard creates the arrays, each shard reserves the blocks of the rows it decodes."""
    import os

    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)  # 16-image chunks: 3 train, 1 val
    calls, real = [], os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate",
                        lambda fd, pos, n: (calls.append((pos, n)), real(fd, pos, n))[1])
    work = stream.make_plan(cfg(tree), tmp_path / "c", tree)
    assert calls == [] and not list(work.glob("*_images.npy"))
    row = 12 * 12 * 3
    ids = stream.chunk_ids(stream.read_plan(work))
    for k in (1, 0, 2):
        calls.clear()
        shards.ShardJob(str(work), k, 3, 1)()
        rows = sum(min(16, 42 - 16 * i) if s == "train" else 9 for s, i in stream.shard(ids, k, 3))
        assert sum(n for _, n in calls) == rows * row, (k, calls)
    shards.merge(work, 3)
    assert _bytes(tmp_path / "c") == _bytes(_ref(tree, tmp_path))


def _ref(tree, tmp_path):
    prepare(cfg(tree), tmp_path / "ref", None, workers=1)
    return tmp_path / "ref"
