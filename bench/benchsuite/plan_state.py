"""Per-image memory of the streaming prepare at ImageNet-1k scale (issue 15), measured, not
extrapolated from small trees.

What grows with N in `data prepare` is the parent's plan state: the scanned file list and
labels (make_plan, with the plan dict and its JSON blob), the plan read back while chunks are
decoded, and in finish the plan, the labels and one histogram per chunk (stream._markers).
The decode workers are forked before the plan exists and each holds one chunk, whatever N.
Creating 1.33M files to scan takes hours, so the child below hands the real make_plan a
synthetic scan with ImageNet's names (scan_image_folder patched), then runs the parent's later
phases with the real read_plan / _jobs / _markers on marker files written as decode_chunk
writes them. Its peak RSS over a post-import baseline, at two N, gives bytes per image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = "import sys; from benchsuite.plan_state import child; child(*sys.argv[1:])"
SUITE_PARENT = Path(__file__).resolve().parents[1]  # bench/: the child imports benchsuite
# ImageNet as unpacked from the Kaggle ILSVRC archive: only a string here (the scan is synthetic)
ROOT = Path("/datasets/imagenet/ILSVRC/Data/CLS-LOC")


def synthetic_scans(root: Path, n_train: int, n_val: int, classes: int = 1000) -> dict:
    """FolderSplits as scan_image_folder returns them for ImageNet's layout and file names:
    train/n01440764/n01440764_10026.JPEG, val/n01440764/ILSVRC2012_val_00000293.JPEG."""
    import numpy as np

    from pixbench.data.sources import FolderSplit

    wnids = tuple(f"n{1440764 + 7919 * c:08d}" for c in range(classes))
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        cls = np.arange(n) * classes // max(1, n)  # contiguous, sorted by class as a scan is
        name = (lambda w, i: f"{w}_{10000 + i % 90000}.JPEG") if split == "train" else \
            (lambda w, i: f"ILSVRC2012_val_{i + 1:08d}.JPEG")
        files = tuple(f"{root}/{split}/{wnids[c]}/{name(wnids[c], i)}" for i, c in enumerate(cls))
        out[split] = FolderSplit(root / split, wnids, files, cls.astype(np.int64))
    return out


def _maxrss() -> int:
    """This process's peak RSS: VmHWM (of this exec's memory map; getrusage's ru_maxrss
    would carry the forking parent's peak across the exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) * 1024


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _write_markers(work: Path, plan: dict) -> None:
    """A done marker per chunk, as decode_chunk writes it (a real histogram's JSON); written
    plainly: the fixture, not the code measured."""
    import numpy as np

    from pixbench.data import stats, stream

    img = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    blob = json.dumps({"n": plan["chunk"], "gray": False, "bad": [],
                       "hist": stats.channel_hist(img).tolist()})
    shutil.rmtree(work / stream.DONE, ignore_errors=True)
    (work / stream.DONE).mkdir()
    for s, i in stream.chunk_ids(plan):
        stream._marker(work, s, i).write_text(blob)  # noqa: SLF001 - the real marker name


def child(work: str, n_train: str, n_val: str, sizes: str) -> None:
    """Run in a fresh process: prints the peak RSS over the post-import baseline after each
    phase of the parent (make_plan; decode; finish at each image size in `sizes`)."""
    from unittest import mock

    import numpy as np

    from pixbench.config import DataConfig
    from pixbench.data import stream

    work_p, root = Path(work), ROOT
    cfg = DataConfig(source="imagefolder", image_size=28, root=str(root), allow_download=False,
                     skip_corrupt=False, channels="auto", fast_decode=None)
    base = _rss()
    scans = synthetic_scans(root, int(n_train), int(n_val))
    with mock.patch.object(stream, "scan_image_folder", lambda r, s: scans[s]):
        wd = stream.make_plan(cfg, work_p / "cache", root)  # 28px arrays: preallocated on disk
    chars = float(np.mean([len(f) for f in scans["train"].files]))
    del scans
    out = {"baseline_rss": base, "train_path_chars": round(chars, 1), "make_plan": _maxrss() - base}
    plan = stream.read_plan(wd)  # decode_chunks holds this while the workers decode
    jobs = list(zip(range(4), stream._jobs(wd, plan, stream.chunk_ids(plan))))  # noqa: SLF001
    out["decode"] = _maxrss() - base
    del plan, jobs
    for size in map(int, sizes.split(",")):  # finish: plan + labels + one marker per chunk
        plan = stream.read_plan(wd)
        plan["chunk"] = stream.chunk_len(size, plan["alloc"])
        _write_markers(wd, plan)
        labels = {s: np.load(wd / f"{s}_labels.npy") for s in ("train", "val")}
        marks = stream._markers(wd, plan)  # noqa: SLF001 - the real finish state
        out[f"finish_{size}px"] = _maxrss() - base
        del plan, labels, marks
    shutil.rmtree(wd)
    print(json.dumps(out))


def measure(work: Path, ns: list[tuple[int, int]], sizes=(28, 256)) -> dict:
    """The child at each (n_train, n_val); bytes per image of each size's peak phase between
    the smallest and the largest N."""
    points = []
    for n_train, n_val in ns:
        d = work / f"state-{n_train}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
            filter(None, (str(SUITE_PARENT), os.environ.get("PYTHONPATH")))))
        res = subprocess.run([sys.executable, "-c", CHILD, str(d), str(n_train), str(n_val),
                              ",".join(map(str, sizes))], env=env, check=True,
                             capture_output=True, text=True)
        shutil.rmtree(d, ignore_errors=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        points.append({"n_train": n_train, "n_val": n_val, **row})
    a, b = points[0], points[-1]
    dn = max(1, b["n_train"] + b["n_val"] - a["n_train"] - a["n_val"])
    per = {f"{s}px": round((b[f"finish_{s}px"] - a[f"finish_{s}px"]) / dn, 1) for s in sizes}
    return {"points": points, "bytes_per_image": per}
