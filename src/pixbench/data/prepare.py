"""`pixbench data prepare`: source -> resize -> uint8 cache with a manifest.

Order matters for "nothing lost, nothing escapes": every input is checked (the cache location
is writable, ImageFolder structure and class lists) before anything is decoded, and the cache
is written into a hidden dir next to it that is renamed into place (cache.py), by one prepare
at a time (lock.py: a second prepare of the same cache waits for the first). ImageFolder
trees stream through stream.py (memory independent of N, parallel, resumable, shardable; as
many decode workers as fit the node's memory: capped_workers);
Fashion-MNIST and CIFAR are small arrays written by cache.write_cache. Either way data.channels
auto stores one channel when every image of both splits is gray by its pixels (R == G == B),
whatever its file mode, and says so in the manifest (`channels_from`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from pixbench.config import DataConfig
from pixbench.data import cache, lock, stream
from pixbench.data.cache import SPLITS, write_cache
from pixbench.data.decode import by_pixels, is_gray
from pixbench.data.decode import decode_file, to_8bit, to_channels  # noqa: F401 - public API
from pixbench.data.sources import Split, load_cifar, load_fashion_mnist
from pixbench.errors import UserError


def resize_uint8(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """Antialiased bilinear resize of uint8 (N, H, W, C) images; identity when already `size`."""
    import torch
    import torch.nn.functional as F

    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((images.shape[0], size, size, images.shape[3]), dtype=np.uint8)
    for i in range(0, images.shape[0], chunk):
        x = torch.from_numpy(np.array(images[i:i + chunk])).permute(0, 3, 1, 2)
        y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)  # (n, C, size, size)
        out[i:i + chunk] = y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def folder_root(cfg: DataConfig, data_root: Path | None) -> Path:
    if cfg.root is None:
        raise UserError("data.root must name the ImageFolder directory when data.source=imagefolder")
    root = Path(cfg.root)
    if not root.is_absolute():
        if data_root is None:
            raise UserError(f"data.root={cfg.root} is relative but PIXBENCH_DATA_ROOT is not set")
        root = data_root / root
    return root


def load_array_splits(cfg: DataConfig, data_root: Path | None) -> dict[str, Split]:
    """Fashion-MNIST or CIFAR, both splits resized (each as it comes: the raw train split is
    freed before val loads), with data.channels applied."""
    splits = {}
    for s in SPLITS:
        if cfg.source == "fashion_mnist":
            sp = load_fashion_mnist(s, data_root, cfg.allow_download)
        else:
            sp = load_cifar(cfg.source, s, data_root, cfg.allow_download)
        images = resize_uint8(sp.images, cfg.image_size)
        if cfg.channels != "auto":
            images = to_channels(images, cfg.channels)
        splits[s] = dataclasses.replace(sp, images=images)
    if splits["train"].classes != splits["val"].classes:
        raise UserError(f"{cfg.source}: train and val class lists differ")
    for s, sp in splits.items():
        if len(sp.images) == 0:
            raise UserError(f"{cfg.source}: the {s} split has no images")
    return splits


def gray_by_pixels(cfg: DataConfig, splits: dict[str, Split]) -> tuple[dict[str, Split], dict]:
    """data.channels auto on 3-channel arrays whose every pixel of both splits has R == G == B:
    their first channel (exact, decode.gray_if_equal) and the manifest's record of why; else
    the splits unchanged and no record (CIFAR has colour; Fashion-MNIST is 1 channel already)."""
    if cfg.channels != "auto" or not all(sp.images.shape[3] == 3 and is_gray(sp.images)
                                         for sp in splits.values()):
        return splits, {}
    gray = {s: dataclasses.replace(sp, images=np.ascontiguousarray(sp.images[..., :1]))
            for s, sp in splits.items()}
    return gray, by_pixels(sum(len(sp.images) for sp in gray.values()))


def check_writable(out_dir: Path) -> None:
    """Before any decoding: the cache's nearest existing ancestor is a writable folder."""
    p = out_dir.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{p}: is not a directory (cannot hold the dataset cache {out_dir})")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{p}: not writable (cannot create the dataset cache {out_dir})")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a dataset cache folder")


@contextlib.contextmanager
def refusal_cleans(out_dir: Path):
    """Yields a list to put the work dir in. A refusal (UserError, OSError) removes it and the
    cache's parent dirs this call created: nothing changed. Anything else (KeyboardInterrupt,
    SystemExit from a signal, a dead decode worker: stream.Incomplete) leaves the work dir for
    the next run to resume."""
    try:
        created = cache.make_dirs(out_dir.parent)
    except OSError as exc:
        raise UserError(f"{exc.filename or out_dir.parent}: cannot create the cache folder "
                        f"({cache.reason(exc)})") from None
    for p in cache.clean_stale_temps(out_dir.parent):
        print(f"note: removed {p} (left by a killed `pixbench data prepare`)", file=sys.stderr)
    before = None if created else out_dir.parent.stat()
    held: list[Path] = []
    try:
        yield held
    except stream.Incomplete:  # a crashed worker, shards still to run: keep the work to resume
        raise
    except (UserError, OSError) as exc:
        for w in held:
            shutil.rmtree(w, ignore_errors=True)
        cache.undo(out_dir, created, before)
        if isinstance(exc, OSError):
            raise UserError(f"{exc.filename or out_dir}: cannot write the dataset cache "
                            f"({cache.reason(exc)}); nothing was changed") from None
        raise


# What a decode worker holds, for the --mem-gb cap (issue 26). Measured on this project's 2-core
# AMD EPYC VM (bench/test_scale_prepare.py, per-process RSS sampled every 20 ms, 400x350 JPEGs):
# 47 MiB at 28px (interpreter, numpy, PIL; pages shared with the parent counted), 80 MiB at
# 256px where a chunk is 32 MiB (195 MiB before the histogram stopped copying it to int64).
# The estimate adds a whole chunk at its largest and room for one big source image decoded
# (32 MiB: ~5 Mpx RGB plus its crop), so it overstates both measurements.
WORKER_BASE = 48 << 20
DECODE_SCRATCH = 32 << 20
MEM_FRACTION = 0.75  # of the node's (or job's) memory for the decode workers; the rest: the
# prepare process itself (its plan state), the page cache, whatever else runs there


def worker_peak_bytes(image_size: int, alloc: int) -> int:
    """Estimated peak RSS of one decode worker at this image size (chunks at their cap)."""
    chunk = stream.chunk_len(image_size, alloc)
    return WORKER_BASE + chunk * image_size * image_size * alloc + DECODE_SCRATCH


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    """cgroup v2 memory.max of this process's group (a container's or SLURM job's limit)."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        raw = (Path("/sys/fs/cgroup") / rel.lstrip("/") / "memory.max").read_text().strip()
        return int(raw) if raw.isdigit() else None
    except (OSError, ValueError, IndexError):
        return None


def node_memory() -> tuple[int, str]:
    """The memory this prepare may use and where that figure comes from: the smallest of the
    SLURM job's --mem (SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU x this task's cores; MiB),
    its cgroup's memory.max and the node's MemAvailable."""
    found = []
    env = os.environ
    if env.get("SLURM_MEM_PER_NODE", "").isdigit() and int(env["SLURM_MEM_PER_NODE"]) > 0:
        found.append((int(env["SLURM_MEM_PER_NODE"]) << 20, "the SLURM job's --mem"))
    elif env.get("SLURM_MEM_PER_CPU", "").isdigit():
        cpus = len(os.sched_getaffinity(0))
        found.append((int(env["SLURM_MEM_PER_CPU"]) * cpus << 20, "the SLURM job's --mem-per-cpu"))
    for value, where in ((_cgroup_limit(), "cgroup memory.max"),
                         (_meminfo_available(), "MemAvailable")):
        if value:
            found.append((value, where))
    return min(found) if found else (8 << 30, "no memory figure found: 8 GiB assumed")


def capped_workers(requested: int | None, image_size: int, alloc: int,
                   mem_gb: float | None = None) -> int:
    """Decode processes: `requested` (default: every usable core), at most as many as fit the
    memory budget (`mem_gb` GiB, default MEM_FRACTION of node_memory()) at
    worker_peak_bytes each; a note on stderr when the budget lowers the count. Where and how
    a run goes only: the cache's bytes do not depend on it."""
    want = requested or stream.default_workers()
    if mem_gb is not None:
        budget, where = int(mem_gb * (1 << 30)), "--mem-gb"
    else:
        total, source = node_memory()
        budget, where = int(MEM_FRACTION * total), f"{MEM_FRACTION:.0%} of {source}"
    per = worker_peak_bytes(image_size, alloc)
    fit = max(1, budget // per)
    if fit < want:
        print(f"note: {fit} decode workers, not {want}: a memory budget of "
              f"{budget / (1 << 30):.2f} GiB ({where}) at ~{per >> 20} MiB per worker "
              f"({image_size}px)", file=sys.stderr, flush=True)
    return int(min(want, fit))


def prepare_folder(cfg, out_dir: Path, root: Path, held: list, workers: int | None = None,
                   progress: bool = False, mem_gb: float | None = None) -> dict:
    """Plan, decode every chunk here with `workers` processes (capped by the memory budget:
    capped_workers), finish; resumes a killed run. `held`: refusal_cleans' list, which gets
    the work dir."""
    workers = capped_workers(workers, cfg.image_size, 1 if cfg.channels == 1 else 3, mem_gb)
    with contextlib.ExitStack() as stack:
        pool = stream.start_pool(workers)  # forked before the file list exists
        if pool is not None:
            stack.enter_context(pool)
        work = stream.make_plan(cfg, out_dir, root, parts=workers)
        held.append(work)
        stream.decode_chunks(work, None, workers, progress, pool=pool)
        return stream.finish(work)


def _stamp(out_dir: Path) -> tuple | None:
    """Which cache is in place now (a swap-in gives the manifest a new inode)."""
    try:
        st = (out_dir / cache.MANIFEST).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def made_meanwhile(cfg: DataConfig, out_dir: Path, before: tuple | None) -> dict | None:
    """After waiting for another prepare of this cache: the cache it swapped in, when that
    loads and was made for this data config; else None (this prepare does the work)."""
    if _stamp(out_dir) in (None, before):
        return None
    try:
        manifest = cache.load_cache(out_dir, verify=True).manifest
    except UserError:
        return None
    same = manifest.get("spec") == json.loads(json.dumps(cfg.model_dump(mode="json")))
    return manifest if same else None


def prepare(cfg: DataConfig, out_dir: Path, data_root: Path | None, workers: int | None = None,
            progress: bool = False, mem_gb: float | None = None) -> dict:
    """Build the cache for one profile's data section; returns the manifest. workers: decode
    processes for ImageFolder trees (default: every usable core), at most as many as fit
    `mem_gb` (capped_workers). Holds the cache's prepare lock (lock.py): a prepare of the
    same cache running elsewhere is waited for."""
    out_dir = Path(out_dir)
    check_writable(out_dir)
    root = folder_root(cfg, data_root) if cfg.source == "imagefolder" else None
    before = _stamp(out_dir)
    with refusal_cleans(out_dir) as held, lock.holding(out_dir) as waited:
        if waited and (done := made_meanwhile(cfg, out_dir, before)) is not None:
            return done
        if root is not None:
            return prepare_folder(cfg, out_dir, root, held, workers, progress, mem_gb)
        splits, decided = gray_by_pixels(cfg, load_array_splits(cfg, data_root))
        meta = {"source": cfg.source, "spec": cfg.model_dump(), **decided}
        return write_cache(out_dir, {s: (sp.images, sp.labels) for s, sp in splits.items()},
                           list(splits["train"].classes), meta)


def run(spec, paths, *, stale: str = "error", device: str = "auto", progress: bool = True,
        workers: int | None = None, mem_gb: float | None = None) -> dict:
    """The `prepare` task (a PrepareSpec): the cache of one track's images."""
    manifest = prepare(spec.data, cache_path(spec, paths), paths.data_root, workers, progress,
                       mem_gb)
    return {"run_id": spec.run_id, "path": str(cache_path(spec, paths)),
            "counts": manifest["counts"], "image_size": manifest["image_size"],
            "channels": manifest["channels"], "num_classes": manifest["num_classes"]}


def cache_path(spec, paths) -> Path:
    return paths.gen_cache_for(spec.profile) if spec.track == "gen" else paths.cache_for(spec.profile)
