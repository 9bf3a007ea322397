"""Streaming ImageFolder prepare: memory independent of N, parallel, resumable, shardable.

plan: scan both splits, class folder by class folder, into `.{cache}.work-{digest}/` (digest
of spec, root and file list): the paths, their index, the labels and plan.json (workdir.py).
decode: the first decode of a plan creates the image arrays (.npy; the blocks of the rows it
decodes reserved: npyfile.py); each chunk (chunk_len images) by one worker: decode, pwrite its
rows, fsync, then done/{split}-{i}.json (histogram, unreadable files); nothing decoded goes
through a pipe, a marked chunk is never redone, so a killed run (or requeued array task) ends
byte-identical. finish: exact summed histograms, unreadable files left out on request, one
channel when all gray, each file hashed once, the manifest, the swap. A refusal (bad input,
disk full) removes the work dir; only an interruption (kill, Ctrl-C, time limit) leaves it
to resume from.
Gray is by the pixels (decode.gray_if_equal): a chunk's marker says whether all its images had
R == G == B, finish ANDs the markers of every chunk of both splits: a function of the file
list alone, whoever decoded which chunk, with no image held (3-channel rows, cut to one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pixbench.data import cache, npyfile, stats, workdir
from pixbench.data.decode import by_pixels, decode_file, to_channels
from pixbench.data.sources import check_same_classes, listed, shown
from pixbench.data.workdir import (DONE, PLAN, PLAN_VERSION, cache_of, chunk_ids,  # noqa: F401
                                   chunk_names, drop_plan, is_done, merged, missing, read_plan,
                                   shard, work_dir, writing)
from pixbench.errors import UserError
from pixbench.procs import worker_dies_with
from pixbench.runio import atomic_write_bytes

CHUNK_BYTES = 32 << 20  # decoded bytes per chunk, at most (see chunk_len)
CHUNKS_PER_WORKER = 4  # at least, where N allows: a slow chunk holds up the end by <= 1/4


def chunk_len(image_size: int, channels: int, n_images: int = 0, parts: int = 1) -> int:
    """Images per chunk: at most ~CHUNK_BYTES of output and 4096 images (a worker's memory is
    one chunk: bounded at 256px; per-chunk overhead small at 28px), at least 16, and small
    enough that each of `parts` workers (shards x workers per shard) gets CHUNKS_PER_WORKER
    chunks of `n_images`: at 28px, 4096-image chunks made 326 chunks of ImageNet-1k, which
    left >= 186 of 16 x 32 workers idle and resumed in steps of 4096 (issue 26). Where the
    rows go does not depend on it (chunk i is rows i*chunk..): the cache's bytes never do."""
    cap = int(max(16, min(4096, CHUNK_BYTES // (image_size * image_size * channels))))
    if n_images <= 0:
        return cap
    # floor, not ceil: then N / chunk >= CHUNKS_PER_WORKER x parts (ceil gave 8167 chunks for
    # the 8192 of 16 x 128 workers at 28px)
    return max(16, min(cap, n_images // (CHUNKS_PER_WORKER * max(1, parts))))


def default_workers() -> int:
    """Every core this process may run on (SLURM's cpuset and taskset included)."""
    return len(os.sched_getaffinity(0))


# ------------------------------------------------------------------------------------- plan


def _preallocate(path: Path, shape: tuple) -> int:
    """A uint8 .npy of zeros whose disk blocks are reserved now (npyfile.py): a full disk is an
    error before decoding, and rows are written without a memory map, never a SIGBUS.
    Returns the data offset."""
    return npyfile.create(path, np.uint8, shape)


def make_plan(cfg, out_dir: Path, root: Path, parts: int = 1) -> Path:
    """The work dir of this prepare: reused when it exists (resume), else created whole in a
    temp dir and renamed into place, so a half-made work dir never looks like a plan.
    `parts`: the decode workers of all shards together (sets the chunk size: chunk_len).
    Streams the scan into the plan's files (workdir.py): memory independent of N."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{cache.host_tag()}-"
                                      f"{os.getpid()}-", dir=out_dir.parent))
    try:
        h, splits, n = workdir.digest_head(cfg, root), {}, {}
        for s in cache.SPLITS:
            with writing(out_dir):  # the plan's files: paths, their index, labels
                splits[s], n[s] = workdir.scan_split(root, s, tmp, h)
        check_same_classes(splits["train"], splits["val"])  # before hours of decoding
        work = work_dir(out_dir, h.hexdigest()[:16])
        if (work / PLAN).is_file() or merged(work):
            return work
        if work.exists():  # killed while a refusal removed it: neither a plan nor a cache
            shutil.rmtree(work)
        _clean_other_work_dirs(out_dir, work)
        alloc = 1 if cfg.channels == 1 else 3  # auto: 3 until every image turns out gray
        plan = {"version": PLAN_VERSION, "source": cfg.source, "spec": cfg.model_dump(),
                "out_dir": str(out_dir), "classes": list(splits["train"].classes),
                "image_size": cfg.image_size, "alloc": alloc,
                "chunk": chunk_len(cfg.image_size, alloc, sum(n.values()), parts),
                "splits": {s: {"shape": [n[s], cfg.image_size, cfg.image_size, alloc]}
                           for s in cache.SPLITS}}
        (tmp / DONE).mkdir()
        atomic_write_bytes(tmp / PLAN, json.dumps(plan, ensure_ascii=False).encode(
            "utf-8", "surrogateescape"))
        os.chmod(tmp, 0o755)
        tmp.rename(work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return work


def _clean_other_work_dirs(out_dir: Path, keep: Path) -> None:
    """Work dirs of an earlier spec or file list of this cache can never resume: remove them
    once a day old (a younger one may belong to a prepare still running elsewhere)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.work-*"):
        if p != keep and p.is_dir() and not p.is_symlink() \
                and time.time() - p.stat().st_mtime > cache.STALE_AFTER_S:
            shutil.rmtree(p, ignore_errors=True)
            print(f"note: removed {p} (an older prepare's work dir)", file=sys.stderr)


# ----------------------------------------------------------------------------------- decode


def decode_chunk(job: tuple) -> int:
    """Decode one chunk into its rows of the memory map and mark it done; returns its size.
    Runs in a worker process and maps only its own rows, so a worker's memory is one chunk."""
    work, split, i, chunk, files, size, alloc, want, draft, offset = job
    n = len(files)
    out = np.zeros((n, size, size, alloc), dtype=np.uint8)  # (n, S, S, C)
    ok, bad, gray = np.ones(n, dtype=bool), [], True
    for j, f in enumerate(files):
        img, why = decode_file((f, size), draft)
        if img is None:
            ok[j] = False
            bad.append([j, why])
            continue
        gray = gray and img.shape[2] == 1  # decode_file: 1 channel iff R == G == B everywhere
        out[j] = to_channels(img[None], 1)[0] if want == 1 else img  # gray broadcasts onto 3
    # pwrite, not a memory map (a full disk is an OSError, never SIGBUS); fsync: the rows are
    # on disk before the marker says so
    npyfile.write_rows(Path(work) / f"{split}_images.npy", offset, i * chunk, out, sync=True)
    # keep=ok, not out[ok]: that copied the whole chunk (32 MiB at 256px) once more
    marker = {"n": n, "gray": gray, "bad": bad, "hist": stats.channel_hist(out, ok).tolist()}
    atomic_write_bytes(workdir.marker(Path(work), split, i), json.dumps(marker).encode())
    return n


def _jobs(work: Path, plan: dict, ids: list[tuple[str, int]], offsets: dict):
    """The decode_chunk jobs of the chunks in `ids` that have no done marker yet (lazily: the
    pool takes them as workers free up; each reads its chunk's paths from the plan)."""
    c, spec = plan["chunk"], plan["spec"]
    for s, i in ids:
        if is_done(work, s, i):
            continue
        files = workdir.paths(work, s, i * c, min(plan["splits"][s]["shape"][0], (i + 1) * c))
        yield (str(work), s, i, c, files, plan["image_size"], plan["alloc"], spec["channels"],
               spec["fast_decode"], offsets[s])


def start_pool(workers: int | None):
    """A process pool with every worker already forked (None for one worker: decode here).
    Start it before the plan is made or read: forked workers then share a slim parent. Each
    worker is killed when this process dies (SIGKILL, SIGTERM, an OOM kill: the initializer's
    PR_SET_PDEATHSIG, procs.worker_dies_with; tests/test_prepare_orphans.py): a forked worker
    holds both ends of the pool's pipes and would otherwise wait on them forever."""
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or default_workers()
    if workers == 1:
        return None
    pool = ProcessPoolExecutor(workers, initializer=worker_dies_with, initargs=(os.getpid(),))
    pool.submit(os.getpid).result()  # fork start: all workers are created at the first submit
    return pool


def decode_chunks(work: Path, ids: list[tuple[str, int]] | None = None,
                  workers: int | None = None, progress: bool = False, pool=None) -> int:
    """Decode the not-yet-done chunks of `ids` (default: all) with `workers` processes (or
    `pool`, from start_pool); returns how many images were decoded now."""
    from concurrent.futures.process import BrokenProcessPool

    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = start_pool(workers)
            if pool is not None:
                stack.enter_context(pool)
        if merged(work):  # every chunk decoded and merged: finish swaps it in
            return 0
        plan = read_plan(work)
        ids = chunk_ids(plan) if ids is None else ids
        progress = progress and sys.stderr.isatty()
        jobs, done = _jobs(work, plan, ids, workdir.outputs(work, plan, ids)), 0
        # keep 2 chunks per worker in flight (map() would submit every job at once)
        results = map(decode_chunk, jobs) if pool is None else \
            _bounded(pool, jobs, 2 * pool._max_workers)  # noqa: SLF001 - the pool's own size
        try:
            for n in results:
                done += n
                if progress:
                    print(f"\rdecoded {done} images", end="", file=sys.stderr, flush=True)
        except BrokenProcessPool:  # a decoder crashed hard (or was killed): no exception to name
            raise Incomplete(f"{shown(plan['out_dir'])}: an image decoding process died (a file "
                            "that crashes PIL, or out of memory); re-run to resume, or run with "
                            "--workers 1 to find the file") from None
    if progress and done:
        print(file=sys.stderr)
    return done


def _bounded(pool, jobs, in_flight: int):
    """pool.submit over `jobs` with at most `in_flight` pending; results in completion order."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set()
    for job in jobs:
        pending.add(pool.submit(decode_chunk, job))
        if len(pending) >= in_flight:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in finished)
    for f in pending:
        yield f.result()


# ----------------------------------------------------------------------------------- finish


class Incomplete(UserError):
    """Chunks without a done marker: the work dir is kept for the shards still to run."""


def _markers(work: Path, plan: dict) -> dict:
    """The done markers tallied as they are read: unreadable files by split (row, why), gray
    (all chunks), the training split's summed histogram. Not one (C, 256) array per chunk
    kept: 47 MiB at ImageNet-1k's 7.8k 256px chunks (benchsuite.plan_state)."""
    ids = chunk_ids(plan)
    gone = missing(work, ids)
    if gone:
        raise Incomplete(f"{work}: {len(gone)} of {len(ids)} chunks are not decoded "
                         f"({chunk_names(gone)}: a shard failed or was cancelled); re-run "
                         "`pixbench data prepare` to finish them")
    c = plan["chunk"]
    out = {"bad": {s: [] for s in cache.SPLITS}, "gray": True, "hist": 0}
    for s, i in ids:  # train then val, in row order
        m = json.loads(workdir.marker(work, s, i).read_text())
        out["bad"][s] += [(i * c + j, why) for j, why in m["bad"]]
        out["gray"] = out["gray"] and m["gray"]
        if s == "train":  # exact integers: any order sums to the same
            out["hist"] = out["hist"] + np.asarray(m["hist"], dtype=np.int64)
    return out


def _path(work: Path, split: str, k: int) -> str:
    return workdir.paths(work, split, k, k + 1)[0]


def _check_bad(work: Path, plan: dict, bad: dict) -> None:
    """Unreadable files: refused, naming the first, unless data.skip_corrupt; a class or a
    split left without images is refused either way."""
    flat = [(s, k, why) for s in cache.SPLITS for k, why in bad[s]]
    if flat and not plan["spec"]["skip_corrupt"]:
        s, k, why = flat[0]
        more = f"; {len(flat) - 1} more unreadable image files" if len(flat) > 1 else ""
        raise UserError(f"{shown(_path(work, s, k))}: cannot decode image ({why}){more}; "
                        "set data.skip_corrupt: true to leave them out")
    labels = {s: np.load(work / f"{s}_labels.npy") for s in cache.SPLITS}
    for s in cache.SPLITS:
        keep = np.ones(len(labels[s]), dtype=bool)
        keep[[k for k, _ in bad[s]]] = False
        emptied = [c for i, c in enumerate(plan["classes"]) if not (labels[s][keep] == i).any()]
        if emptied:
            raise UserError(f"{shown(Path(_path(work, s, 0)).parents[1])}: no readable "
                            f"images left in class folders {listed(emptied)}")
    for s in cache.SPLITS:
        if len(bad[s]) == len(labels[s]):
            raise UserError(f"{plan['spec']['source']}: the {s} split has no images")


def _windows(path: Path, shape: tuple, step: int):
    """(lo, rows) read-only windows of a .npy image file, each its own small memory map: a
    pass over a file of any size maps one window at a time (bounded resident memory)."""
    offset = npyfile.data_offset(path)
    row = int(np.prod(shape[1:]))
    for lo in range(0, shape[0], step):
        n = min(step, shape[0] - lo)
        mm = np.memmap(path, dtype=np.uint8, mode="r", offset=offset + lo * row,
                       shape=(n, *shape[1:]))
        yield lo, mm
        del mm


def _compact(work: Path, split: str, shape: list, drop: list[int], channels: int) -> tuple:
    """Rewrite a split without the rows in `drop` and with `channels` channels (the first:
    gray images were replicated); returns its final shape. Rerun-safe: the new files are made
    beside the old, then a journal (`<split>_compacted.json`) names their moves, then they
    move; a merge killed anywhere here finishes the moves on its rerun, never compacts twice."""
    journal = work / f"{split}_compacted.json"
    if not journal.is_file():
        if not drop and shape[3] == channels:
            return tuple(shape)
        new = _compacted_files(work, split, shape, drop, channels)
        atomic_write_bytes(journal, json.dumps({"shape": new}).encode())
    new = tuple(json.loads(journal.read_text())["shape"])
    for kind in ("images", "labels"):  # a move done before a kill: its source is gone
        src = work / f"{split}_{kind}.new.npy"
        if src.is_file():
            os.replace(src, work / f"{split}_{kind}.npy")
    return new


def _compacted_files(work: Path, split: str, shape: list, drop: list[int],
                     channels: int) -> list[int]:
    """`<split>_images.new.npy` (and labels when rows drop) without `drop`, `channels` wide."""
    keep = np.ones(shape[0], dtype=bool)
    keep[drop] = False
    new = [int(keep.sum()), shape[1], shape[2], channels]
    tmp = work / f"{split}_images.new.npy"
    offset = _preallocate(tmp, tuple(new))
    step = chunk_len(shape[1], shape[3])
    rows = (mm[keep[lo:lo + len(mm)], ..., :channels] for lo, mm in
            _windows(work / f"{split}_images.npy", tuple(shape), step))
    for k, block in enumerate(_rebatch(rows, step)):
        npyfile.write_rows(tmp, offset, k * step, block)  # synced with the rest by finish
    if drop:
        labels = np.load(work / f"{split}_labels.npy")
        np.save(work / f"{split}_labels.new.npy", labels[keep])
    return new


def _rebatch(blocks, step: int):
    """Blocks of varying length -> blocks of exactly `step` rows (the last shorter)."""
    buf, have = [], 0
    for b in blocks:
        buf.append(np.array(b))
        have += len(b)
        while have >= step:
            cat = np.concatenate(buf)
            yield cat[:step]
            buf, have = [cat[step:]], have - step
    if have:
        yield np.concatenate(buf)


def finish(work: Path) -> dict:
    """Merge: statistics, unreadable files, channels, hashes, manifest, swap in."""
    if merged(work):  # checked like any cache before it replaces the one in place
        manifest = cache.load_cache(work, verify=True).manifest
        drop_plan(work)
        cache.swap_in(work, cache_of(work))
        return manifest
    plan = read_plan(work)
    out_dir, spec = Path(plan["out_dir"]), plan["spec"]
    tally = _markers(work, plan)
    bad = tally["bad"]
    if not any((work / f"{s}_compacted.json").is_file() for s in cache.SPLITS):
        _check_bad(work, plan, bad)  # (a rerun past a compaction passed it: labels moved)
    channels = 1 if spec["channels"] == "auto" and tally["gray"] else plan["alloc"]
    hist = tally["hist"][:channels]
    shapes, skipped = {}, {}
    for s in cache.SPLITS:
        drop = [k for k, _ in bad[s]]
        with writing(out_dir / f"{s}_images.npy"):
            shapes[s] = _compact(work, s, plan["splits"][s]["shape"], drop, channels)
        if drop:  # nothing lost silently: what was left out is on record
            skipped[s] = [shown(_path(work, s, k)) for k in drop]
    files = {}
    for s in cache.SPLITS:
        for kind, shape, dt in (("images", shapes[s], "uint8"), ("labels", shapes[s][:1], "int64")):
            path = work / f"{s}_{kind}.npy"
            with writing(out_dir / path.name):
                _fsync(path)
                files[path.name] = cache.file_info(path, shape, dt)
    meta = {"source": spec["source"], "spec": spec, **({"skipped": skipped} if skipped else {})}
    if spec["channels"] == "auto" and channels == 1:  # an L-mode tree too: its pixels are gray
        meta.update(by_pixels(sum(sh[0] for sh in shapes.values())))
    manifest = cache.build_manifest(shapes, plan["classes"], meta, files, hist)
    with writing(out_dir / cache.MANIFEST):
        atomic_write_bytes(work / cache.MANIFEST,
                           (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    (work / PLAN).unlink()  # from here on the work dir is `merged`: a rerun swaps it in
    drop_plan(work)
    cache.swap_in(work, out_dir)
    return manifest


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
