"""Scale rehearsal of `data prepare` (issues 15, 26): a synthetic ImageNet-like JPEG tree,
prepare measured at three sizes N at 28px and on the generation path at 256px, the pixel
difference of fast decode, the per-image plan state at ImageNet-1k's N (plan_state.py), the
per-worker peak, and the extrapolation to ImageNet-1k and to 32-128 core nodes; optionally the
same for the code before a change (`before_src`: another checkout's src/).
bench/test_scale_prepare.py runs it and writes reports/bench/scale-prepare.{md,json}.

Each prepare runs in a child process at the default worker count (every core, as a user's
prepare runs): wall time, CPU time of the child and every process it waited for
(getrusage(RUSAGE_CHILDREN): the decode workers included, robust to a shared CPU), peak RSS
summed over the child's process tree and the peak of each process (sampled every 20 ms with
psutil; pages a worker shares with the parent counted in both, so an upper bound), and the
cache's disk use.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchsuite import plan_state

IMAGENET = {"train": 1_281_167, "val": 50_000}
GIB = 1 << 30
# The child: prepare one ImageFolder cache; `fast_decode`/`workers` only where the code has them
# (so the same driver measures main's prepare for comparison).
DRIVER = """
import json, sys
from pathlib import Path
from pixbench.config import DataConfig
from pixbench.data.prepare import prepare
root, out, size, fast, workers = sys.argv[1:6]
kw = dict(source="imagefolder", image_size=int(size), root=root, allow_download=False,
          skip_corrupt=False)
if "fast_decode" in DataConfig.model_fields:
    kw.update(channels="auto", fast_decode=None if fast == "none" else float(fast))
    m = prepare(DataConfig(**kw), Path(out), None, workers=int(workers) or None)
else:
    m = prepare(DataConfig(**kw), Path(out), None)
print(json.dumps(m["counts"]))
"""


# ------------------------------------------------------------------------------- the tree


def _base_photo(rng, w: int = 512, h: int = 448) -> np.ndarray:
    """Smooth photo-like content: gradients, a low-frequency wave, soft blobs, fine grain
    (JPEG sizes and decode times of real photos depend on such structure; pure noise is not
    representative)."""
    from PIL import Image, ImageFilter

    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, d = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 80 * (a * xx + b * yy) + 30 * np.sin(6 * d * xx + 3 * yy)
    for _ in range(8):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.3)
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None] \
            * rng.uniform(-90, 90, 3)
    img += rng.normal(0, 7, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(0.6)))


def make_tree(root: Path, n_train: int, n_val: int, classes: int = 100, seed: int = 0,
              size: tuple[int, int] = (400, 350)) -> None:
    """`root/{train,val}/cNNN/iiiiiii.jpg`: image i in class i % classes, a random crop,
    flip and colour shift of one of up to 48 base photos, JPEG quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    bases = [_base_photo(rng) for _ in range(min(48, max(4, (n_train + n_val) // 100)))]
    w, h = size
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            d = root / split / f"c{i % classes:03d}"
            d.mkdir(parents=True, exist_ok=True)
            b = bases[rng.integers(len(bases))]
            y, x = rng.integers(0, b.shape[0] - h), rng.integers(0, b.shape[1] - w)
            a = b[y:y + h, x:x + w][:, ::-1 if rng.random() < 0.5 else 1]
            a = np.clip(a * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20, 3), 0, 255)
            Image.fromarray(a.astype(np.uint8)).save(d / f"{i:07d}.jpg", quality=90)


def subset_tree(src: Path, dst: Path, n_train: int, n_val: int) -> Path:
    """The first n images of each split of `src` as symlinks (a smaller tree, same files)."""
    for split, n in (("train", n_train), ("val", n_val)):
        for f in sorted((src / split).rglob("*.jpg")):
            if int(f.stem) < n:
                (dst / split / f.parent.name).mkdir(parents=True, exist_ok=True)
                (dst / split / f.parent.name / f.name).symlink_to(f)
    return dst


# ----------------------------------------------------------------------------- measuring


def _rss_by_pid(proc) -> dict[int, int]:
    """RSS of the prepare process and of each process under it, by pid."""
    import psutil

    out = {}
    try:
        for p in [proc, *proc.children(recursive=True)]:
            out[p.pid] = p.memory_info().rss
    except psutil.Error:
        pass  # a worker that just exited
    return out


def measure(root: Path, out: Path, size: int, fast_decode: float | None = None,
            workers: int = 0, src: Path | None = None, code: str | None = None) -> dict:
    """Run one prepare in a child process; wall, CPU, peak tree RSS (and the peak of the
    prepare process alone and of its largest decode worker), disk. `src`: another checkout's
    src/ (the code before a change), labelled `code` (default "main")."""
    import psutil

    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", DRIVER, str(root), str(out), str(size),
                              "none" if fast_decode is None else str(fast_decode),
                              str(workers)], env=env, stdout=subprocess.PIPE, text=True)
    proc, peak, per_pid = psutil.Process(child.pid), 0, {}
    while child.poll() is None:
        now = _rss_by_pid(proc)
        peak = max(peak, sum(now.values()))
        for pid, rss in now.items():
            per_pid[pid] = max(per_pid.get(pid, 0), rss)
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode != 0:
        raise RuntimeError(f"prepare of {root} at {size}px failed ({child.returncode})")
    counts = json.loads(child.stdout.read().strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    images = counts["train"] + counts["val"]
    disk = sum(f.stat().st_blocks * 512 for f in out.iterdir())
    kids = [v for pid, v in per_pid.items() if pid != child.pid]
    return {"size": size, "fast_decode": fast_decode,
            "code": code or ("main" if src else "branch"),
            "n_train": counts["train"], "n_val": counts["val"], "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "cpu_ms_per_image": round(1e3 * cpu / images, 3),
            "peak_rss_gib": round(peak / GIB, 3), "disk_mib": round(disk / (1 << 20), 1),
            "parent_peak_mib": round(per_pid.get(child.pid, 0) / (1 << 20), 1),
            "worker_peak_mib": round(max(kids, default=0) / (1 << 20), 1),
            "workers_seen": len(kids)}


def pixel_diff(exact: Path, fast: Path) -> dict:
    """Mean / max / 99.9th percentile absolute difference (0..255) between two caches."""
    diffs = []
    for name in ("train_images.npy", "val_images.npy"):
        a = np.load(exact / name, mmap_mode="r")
        b = np.load(fast / name, mmap_mode="r")
        for i in range(0, len(a), 4096):
            diffs.append(np.abs(a[i:i + 4096].astype(np.int16) - b[i:i + 4096]).ravel())
    d = np.concatenate(diffs)
    return {"mean": round(float(d.mean()), 3), "max": int(d.max()),
            "p99_9": float(np.percentile(d, 99.9)), "equal_fraction": round(float((d == 0).mean()), 4)}


def hash_rate_gbps(mib: int = 256) -> float:
    """sha256 throughput of this CPU (the one full pass prepare makes over its output)."""
    import hashlib

    buf = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    for _ in range(mib // 64):
        hashlib.sha256(buf).hexdigest()
    return round(mib / 1024 / (time.perf_counter() - t0), 3)


# --------------------------------------------------------------------------- the rehearsal


def run_rehearsal(work: Path, sizes28=(2000, 4000, 8000), sizes256=(2000, 4000, 8000),
                  n_val: int = 500, classes: int = 100, fast_gaps=(1.0, 2.0),
                  before_src: Path | None = None, before_label: str = "before",
                  workers: int = 0, state_ns: list[tuple[int, int]] | None = None,
                  file_ns=((20_000, 1_000), (80_000, 4_000))) -> dict:
    """Every measurement of the report; `work` holds the trees and caches. `state_ns`: the
    (n_train, n_val) at which the plan state is measured (default: the largest tree and
    ImageNet-1k); `file_ns`: make_plan on real trees of empty files of these sizes."""
    tree = work / "tree"
    n_max = max(*sizes28, *sizes256)
    if not (tree / "done").exists():
        shutil.rmtree(tree, ignore_errors=True)
        make_tree(tree, n_max, n_val, classes)
        (tree / "done").write_text("")
    subs = {n: subset_tree(tree, work / f"t{n}", n, n_val) if not (work / f"t{n}").exists()
            else work / f"t{n}" for n in {*sizes28, *sizes256}}
    rows = []
    for size, ns in ((28, sizes28), (256, sizes256)):
        for n in ns:
            rows.append(measure(subs[n], work / f"c{size}-{n}", size, workers=workers))
            if size == 256:
                shutil.rmtree(work / f"c{size}-{n}")  # GBs of disk
    big = max(sizes28)
    diffs = {}
    for g in fast_gaps:
        rows.append(measure(subs[big], work / f"c28-fast{g}", 28, g, workers))
        diffs[str(g)] = pixel_diff(work / f"c28-{big}", work / f"c28-fast{g}")
    state_ns = state_ns or imagenet_state_ns(big, n_val)
    doc = {"schema": "pixbench.scale-prepare/2", "machine": machine(), "workers": workers,
           "tree": {"n_val": n_val, "classes": classes, "jpeg": "400x350 q90",
                    "mean_jpeg_kib": round(_mean_jpeg_kib(tree), 1)},
           "fast_decode_diff_28px": diffs, "hash_gbps": hash_rate_gbps(),
           "plan_state": plan_state.measure(work, state_ns),
           "plan_on_files": plan_state.plan_on_files(work, file_ns)}
    if before_src is not None:  # the code before the change, same trees, machine and hour
        for size, n in ((28, big), (256, max(sizes256))):
            rows.append(measure(subs[n], work / f"before{size}-{n}", size, workers=workers,
                                src=before_src, code="before"))
            shutil.rmtree(work / f"before{size}-{n}")
        doc["before"] = {"label": before_label,
                         "plan_state": plan_state.measure(work, state_ns, src=before_src),
                         "plan_on_files": plan_state.plan_on_files(work, file_ns, before_src)}
    return {**doc, "rows": rows}


def _mean_jpeg_kib(tree: Path) -> float:
    files = sorted((tree / "train").rglob("*.jpg"))
    return float(np.mean([f.stat().st_size for f in files[:2000]])) / 1024


def imagenet_state_ns(n_train: int, n_val: int) -> list[tuple[int, int]]:
    """Plan state measured at the largest tree's N and at ImageNet-1k's."""
    return [(n_train, n_val), (IMAGENET["train"], IMAGENET["val"])]


def machine() -> dict:
    import platform

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines()
                 if ln.startswith("model name")), platform.processor())
    return {"cpu": name, "cores": len(os.sched_getaffinity(0)),
            "avx512": " avx512f " in flags, "python": platform.python_version()}
