"""Streaming ImageFolder prepare: memory independent of N, parallel, resumable, shardable.

plan: scan both splits; create `.{cache}.work-{digest}/` (digest of spec, root and file list)
with the image arrays preallocated as .npy files (every block reserved: npyfile.py), the labels
and plan.json. decode: each chunk (CHUNK_BYTES of images) by one worker: decode, pwrite its
rows, fsync, then done/{split}-{i}.json (histogram, unreadable files); nothing decoded goes
through a pipe, a marked chunk is never redone, so a killed run (or requeued array task) ends
byte-identical. finish: exact summed histograms, unreadable files left out on request, one
channel when all gray, each file hashed once, the manifest, the swap. A refusal (bad input,
disk full) removes the work dir; only an interruption (kill, Ctrl-C, time limit) leaves it
to resume from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pixbench.data import cache, npyfile, stats
from pixbench.data.decode import decode_file, to_channels
from pixbench.data.sources import check_same_classes, listed, scan_image_folder, shown
from pixbench.errors import UserError
from pixbench.procs import worker_dies_with
from pixbench.runio import atomic_write_bytes

CHUNK_BYTES = 32 << 20  # decoded bytes per chunk (see chunk_len)
PLAN = "plan.json"
DONE = "done"
PLAN_VERSION = 1


def chunk_len(image_size: int, channels: int) -> int:
    """Images per chunk: ~CHUNK_BYTES of output, 16..4096 images (small chunks keep a worker's
    memory bounded at 256px; large ones keep per-chunk overhead small at 28px)."""
    return int(max(16, min(4096, CHUNK_BYTES // (image_size * image_size * channels))))


def default_workers() -> int:
    """Every core this process may run on (SLURM's cpuset and taskset included)."""
    return len(os.sched_getaffinity(0))


def work_dir(out_dir: Path, digest: str) -> Path:
    return out_dir.with_name(f".{out_dir.name}.work-{digest}")


def cache_of(work: Path) -> Path:
    """The cache a work dir builds (work_dir's inverse)."""
    return work.with_name(work.name[1:].rsplit(".work-", 1)[0])


# ------------------------------------------------------------------------------------- plan


def _digest(cfg, root: Path, scans: dict, chunk: int) -> str:
    h = hashlib.sha256()
    head = {"v": PLAN_VERSION, "spec": cfg.model_dump(), "root": str(root), "chunk": chunk}
    h.update(json.dumps(head, sort_keys=True).encode())
    for s, fs in scans.items():
        h.update(f"\0{s}\0{len(fs.classes)}\0".encode())
        h.update("\0".join(fs.files).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


@contextlib.contextmanager
def writing(path: Path):
    """An OSError while writing `path` (as named in the cache) is a one-line UserError."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{path}: cannot write the dataset cache ({cache.reason(exc)}); "
                        "nothing was changed") from None


def _preallocate(path: Path, shape: tuple) -> int:
    """A uint8 .npy of zeros whose disk blocks are reserved now (npyfile.py): a full disk is an
    error before decoding, and rows are written without a memory map, never a SIGBUS.
    Returns the data offset."""
    return npyfile.create(path, np.uint8, shape)


def make_plan(cfg, out_dir: Path, root: Path) -> Path:
    """The work dir of this prepare: reused when it exists (resume), else created whole in a
    temp dir and renamed into place, so a half-made work dir never looks like a plan."""
    scans = {s: scan_image_folder(root, s) for s in cache.SPLITS}
    check_same_classes(scans["train"], scans["val"])  # before hours of decoding
    alloc = 1 if cfg.channels == 1 else 3  # auto: 3 until every image turns out gray
    chunk = chunk_len(cfg.image_size, alloc)
    work = work_dir(out_dir, _digest(cfg, root, scans, chunk))
    if (work / PLAN).is_file():
        return work
    _clean_other_work_dirs(out_dir, work)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{cache.host_tag()}-"
                                      f"{os.getpid()}-", dir=out_dir.parent))
    try:
        plan = {"version": PLAN_VERSION, "source": cfg.source, "spec": cfg.model_dump(),
                "out_dir": str(out_dir), "classes": list(scans["train"].classes),
                "image_size": cfg.image_size, "alloc": alloc, "chunk": chunk, "splits": {}}
        for s, fs in scans.items():
            shape = (len(fs.files), cfg.image_size, cfg.image_size, alloc)
            with writing(out_dir / f"{s}_images.npy"):
                offset = _preallocate(tmp / f"{s}_images.npy", shape)
            with writing(out_dir / f"{s}_labels.npy"):
                np.save(tmp / f"{s}_labels.npy", fs.labels)
            plan["splits"][s] = {"files": list(fs.files), "shape": list(shape), "offset": offset}
        (tmp / DONE).mkdir()
        blob = json.dumps(plan, ensure_ascii=False).encode("utf-8", "surrogateescape")
        atomic_write_bytes(tmp / PLAN, blob)
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


def read_plan(work: Path) -> dict:
    return json.loads((work / PLAN).read_bytes().decode("utf-8", "surrogateescape"))


def chunk_ids(plan: dict) -> list[tuple[str, int]]:
    """Every chunk of the prepare, train then val: (split, index)."""
    n = {s: -(-sp["shape"][0] // plan["chunk"]) for s, sp in plan["splits"].items()}
    return [(s, i) for s in cache.SPLITS for i in range(n[s])]


def shard(ids: list, k: int, shards: int) -> list:
    """The k-th of `shards` contiguous, disjoint, near-equal ranges of chunk ids."""
    lo, hi = len(ids) * k // shards, len(ids) * (k + 1) // shards
    return ids[lo:hi]


def _marker(work: Path, split: str, i: int) -> Path:
    return work / DONE / f"{split}-{i:07d}.json"


def is_done(work: Path, split: str, i: int) -> bool:
    return _marker(work, split, i).is_file()


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
        gray = gray and img.shape[2] == 1
        out[j] = to_channels(img[None], 1)[0] if want == 1 else img  # gray broadcasts onto 3
    # pwrite, not a memory map (a full disk is an OSError, never SIGBUS); fsync: the rows are
    # on disk before the marker says so
    npyfile.write_rows(Path(work) / f"{split}_images.npy", offset, i * chunk, out, sync=True)
    marker = {"n": n, "gray": gray, "bad": bad, "hist": stats.channel_hist(out[ok]).tolist()}
    atomic_write_bytes(_marker(Path(work), split, i), json.dumps(marker).encode())
    return n


def _jobs(work: Path, plan: dict, ids: list[tuple[str, int]]):
    """The decode_chunk jobs of the chunks in `ids` that have no done marker yet (lazily: the
    pool takes them as workers free up)."""
    c, spec = plan["chunk"], plan["spec"]
    for s, i in ids:
        if is_done(work, s, i):
            continue
        sp = plan["splits"][s]
        yield (str(work), s, i, c, sp["files"][i * c:(i + 1) * c], plan["image_size"],
               plan["alloc"], spec["channels"], spec["fast_decode"], sp["offset"])


def start_pool(workers: int | None):
    """A process pool with every worker already forked (None for one worker: decode here).
    Start it before the plan (a list of every file) is read: forked workers then share a slim
    parent instead of each holding a copy-on-write view of that list. Each worker is killed
    when this process dies (SIGKILL, SIGTERM, an OOM kill): a forked worker holds both ends of
    the pool's pipes and would otherwise wait on them forever."""
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
        plan = read_plan(work)
        ids = chunk_ids(plan) if ids is None else ids
        progress = progress and sys.stderr.isatty()
        jobs, done = _jobs(work, plan, ids), 0
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
    ids = chunk_ids(plan)
    missing = [(s, i) for s, i in ids if not is_done(work, s, i)]
    if missing:
        raise Incomplete(f"{work}: {len(missing)} of {len(ids)} chunks are not decoded (a shard "
                        "failed or was cancelled); re-run `pixbench data prepare` to finish them")
    marks = {}
    for s, i in ids:
        m = json.loads(_marker(work, s, i).read_text())
        m["hist"] = np.asarray(m["hist"], dtype=np.int64)  # (C, 256): 6 KiB, not 25 of ints
        marks[s, i] = m
    return marks


def _check_bad(plan: dict, bad: dict, labels: dict) -> None:
    """Unreadable files: refused, naming the first, unless data.skip_corrupt; a class left
    without images is refused either way."""
    spec, splits = plan["spec"], plan["splits"]
    flat = [(s, k, why) for s in cache.SPLITS for k, why in bad[s]]
    if flat and not spec["skip_corrupt"]:
        s, k, why = flat[0]
        more = f"; {len(flat) - 1} more unreadable image files" if len(flat) > 1 else ""
        raise UserError(f"{shown(splits[s]['files'][k])}: cannot decode image ({why}){more}; "
                        "set data.skip_corrupt: true to leave them out")
    for s in cache.SPLITS:
        keep = np.ones(len(labels[s]), dtype=bool)
        keep[[k for k, _ in bad[s]]] = False
        emptied = [c for i, c in enumerate(plan["classes"]) if not (labels[s][keep] == i).any()]
        if emptied:
            raise UserError(f"{shown(Path(splits[s]['files'][0]).parents[1])}: no readable "
                            f"images left in class folders {listed(emptied)}")


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
    gray images were replicated); returns its final shape."""
    path = work / f"{split}_images.npy"
    if not drop and shape[3] == channels:
        return tuple(shape)
    keep = np.ones(shape[0], dtype=bool)
    keep[drop] = False
    new = (int(keep.sum()), shape[1], shape[2], channels)
    tmp = work / f"{split}_images.new.npy"
    offset = _preallocate(tmp, new)
    step = chunk_len(shape[1], shape[3])
    rows = (mm[keep[lo:lo + len(mm)], ..., :channels] for lo, mm in
            _windows(path, tuple(shape), step))
    for k, block in enumerate(_rebatch(rows, step)):
        npyfile.write_rows(tmp, offset, k * step, block)  # synced with the rest by finish
    os.replace(tmp, path)
    if drop:
        labels = np.load(work / f"{split}_labels.npy")
        np.save(work / f"{split}_labels.npy", labels[keep])
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
    plan = read_plan(work)
    out_dir, spec, c = Path(plan["out_dir"]), plan["spec"], plan["chunk"]
    marks = _markers(work, plan)
    labels = {s: np.load(work / f"{s}_labels.npy") for s in cache.SPLITS}
    bad = {s: [(i * c + j, why) for (s2, i), m in sorted(marks.items()) if s2 == s
               for j, why in m["bad"]] for s in cache.SPLITS}
    _check_bad(plan, bad, labels)
    gray = all(m["gray"] for m in marks.values())
    channels = 1 if spec["channels"] == "auto" and gray else plan["alloc"]
    hist = sum(m["hist"] for (s, _), m in marks.items() if s == "train")[:channels]
    shapes, skipped = {}, {}
    for s in cache.SPLITS:
        drop = [k for k, _ in bad[s]]
        if len(drop) == len(labels[s]):
            raise UserError(f"{spec['source']}: the {s} split has no images")
        with writing(out_dir / f"{s}_images.npy"):
            shapes[s] = _compact(work, s, plan["splits"][s]["shape"], drop, channels)
        if drop:  # nothing lost silently: what was left out is on record
            skipped[s] = [shown(plan["splits"][s]["files"][k]) for k in drop]
    files = {}
    for s in cache.SPLITS:
        for kind, shape, dt in (("images", shapes[s], "uint8"), ("labels", shapes[s][:1], "int64")):
            path = work / f"{s}_{kind}.npy"
            with writing(out_dir / path.name):
                _fsync(path)
                files[path.name] = cache.file_info(path, shape, dt)
    meta = {"source": spec["source"], "spec": spec, **({"skipped": skipped} if skipped else {})}
    manifest = cache.build_manifest(shapes, plan["classes"], meta, files, hist)
    with writing(out_dir / cache.MANIFEST):
        atomic_write_bytes(work / cache.MANIFEST,
                           (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    shutil.rmtree(work / DONE)
    (work / PLAN).unlink()
    cache.swap_in(work, out_dir)
    return manifest


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
