"""A prepare killed inside its merge (stream.finish) at any point: compacting a split, between
its files' moves, after the manifest, after the plan is dropped, before the swap-in. The rerun
decodes nothing again and ends with the bytes of a prepare never killed (issue 26: a kill in
the last window left a work dir that no rerun could replace or finish)."""

from __future__ import annotations

import os

import pytest

from pixbench.data import cache, shards, stream
from pixbench.data.prepare import prepare
from test_prepare_stream import _bytes, cfg, tree  # noqa: F401 - `tree` is a fixture


class Killed(BaseException):
    """SIGKILL's stand-in: no handler runs (not an Exception, not a refusal)."""


def _after(fn, when=lambda *a, **k: True):
    """fn, then Killed when `when(args)` holds."""
    def wrapped(*a, **k):
        out = fn(*a, **k)
        if when(*a, **k):
            raise Killed
        return out
    return wrapped


def _before(fn, when=lambda *a, **k: True):
    def wrapped(*a, **k):
        if when(*a, **k):
            raise Killed
        return fn(*a, **k)
    return wrapped


class _OsKilledOnMove:
    """stream's `os`, whose replace of a compacted labels file is killed before it moves."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def replace(src, dst):
        if str(src).endswith("_labels.new.npy"):
            raise Killed
        return os.replace(src, dst)


def _written(name_ends: str):
    """atomic_write_bytes, killed right after it wrote a file whose name ends so."""
    return lambda f: _after(f, lambda path, _: path.name.endswith(name_ends))


KILLS = {
    "new files written, no journal": ("_compacted_files", _after),
    "journal written, no move": ("atomic_write_bytes", _written("_compacted.json")),
    "images moved, labels not": ("os", None),
    "manifest written, plan kept": ("atomic_write_bytes", _written(cache.MANIFEST)),
    "plan dropped, markers kept": ("drop_plan", _before),
}


@pytest.mark.parametrize("where", [*KILLS, "swapping in"])
def test_a_merge_killed_anywhere_finishes_on_the_rerun(where, tree, tmp_path,  # noqa: F811
                                                       monkeypatch):
    (tree / "train" / "c2" / "broken.jpg").write_bytes(b"not a jpeg")  # a row to leave out
    data = cfg(tree, skip_corrupt=True)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    prepare(data, tmp_path / "ref", None, workers=1)
    with monkeypatch.context() as m:
        if where == "swapping in":
            m.setattr(cache, "swap_in", _before(cache.swap_in))
        elif where == "images moved, labels not":
            m.setattr(stream, "os", _OsKilledOnMove())
        else:
            name, kill = KILLS[where]
            m.setattr(stream, name, kill(getattr(stream, name)))
        with pytest.raises(Killed):
            prepare(data, tmp_path / "c", None, workers=1)
    assert not (tmp_path / "c").exists()
    decoded = []
    real = stream.decode_chunk
    monkeypatch.setattr(stream, "decode_chunk", lambda job: decoded.append(job) or real(job))
    prepare(data, tmp_path / "c", None, workers=1)
    assert decoded == []  # every chunk was done: only the merge's rest ran again
    assert _bytes(tmp_path / "c") == _bytes(tmp_path / "ref")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.")]  # no work dir left
    assert sorted(os.listdir(tmp_path / "c")) == sorted(os.listdir(tmp_path / "ref"))


def test_a_shard_merge_killed_before_the_swap_in_is_finished_by_the_merge_job(
        tree, tmp_path, monkeypatch):  # noqa: F811
    """The SLURM path: the merge job reruns (requeue) and swaps the finished cache in."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    work = stream.make_plan(cfg(tree), tmp_path / "c", tree, parts=2)
    for k in range(2):
        shards.ShardJob(str(work), k, 2, 1)()
    with monkeypatch.context() as m:
        m.setattr(cache, "swap_in", _before(cache.swap_in))
        with pytest.raises(Killed):
            shards.merge(work, 2)
    assert stream.merged(work)
    manifest = shards.merge(work, 2)
    assert manifest == cache.load_cache(tmp_path / "c").manifest and not work.exists()
