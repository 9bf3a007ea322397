"""Per-image memory of the streaming prepare's parent at ImageNet-1k scale (issues 15, 26),
measured, not extrapolated from small trees.

What grows with N in `data prepare` is the parent's plan state: the scan, the plan (before
issue 26 one plan.json of every path, parsed back by the decode, every shard and the merge;
now streamed class by class into files read in slices: pixbench.data.workdir), and in finish
the labels and one histogram per chunk (stream._markers). The decode workers are forked
before the plan exists and each holds one chunk, whatever N.
Creating 1.33M files to scan takes hours, so the child below runs the real make_plan on a
synthetic listing with ImageNet's names (the code before issue 26: scan_image_folder patched
to return the whole scan, which is what it held; since: the class folder listing patched to
make each class's names when asked, one class at a time, as the real listing does), then the
parent's later phases with the real read_plan / _jobs / _markers on marker files written as
decode_chunk writes them. Its peak RSS over a post-import baseline, at two N, gives bytes per
image. `plan_on_files` measures make_plan on real (empty) files instead, at two N.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = "import sys; from benchsuite.plan_state import child; child(*sys.argv[1:])"
FILES_CHILD = ("import sys; from benchsuite.plan_state import files_child; "
               "files_child(*sys.argv[1:])")
SUITE_PARENT = Path(__file__).resolve().parents[1]  # bench/: the child imports benchsuite
# ImageNet as unpacked from the Kaggle ILSVRC archive: only a string here (the scan is synthetic)
ROOT = Path("/datasets/imagenet/ILSVRC/Data/CLS-LOC")
CLASSES = 1000


def _wnids(classes: int = CLASSES) -> tuple[str, ...]:
    return tuple(f"n{1440764 + 7919 * c:08d}" for c in range(classes))


def _class_names(split: str, wnid: str, lo: int, hi: int) -> list[str]:
    """ImageNet's file names of images lo..hi-1: train/n01440764/n01440764_10026.JPEG,
    val/n01440764/ILSVRC2012_val_00000293.JPEG."""
    if split == "train":
        return [f"{wnid}_{10000 + i % 90000}.JPEG" for i in range(lo, hi)]
    return [f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(lo, hi)]


def _bounds(n: int, c: int, classes: int = CLASSES) -> tuple[int, int]:
    """Images of class c among n, contiguous and sorted by class as a scan is."""
    return -(-c * n // classes), -(-(c + 1) * n // classes)


def synthetic_scans(root: Path, n_train: int, n_val: int, classes: int = CLASSES) -> dict:
    """FolderSplits as scan_image_folder returns them for ImageNet's layout and file names."""
    import numpy as np

    from pixbench.data.sources import FolderSplit

    wnids, out = _wnids(classes), {}
    for split, n in (("train", n_train), ("val", n_val)):
        files, labels = [], []
        for c, w in enumerate(wnids):
            lo, hi = _bounds(n, c, classes)
            files += [f"{root}/{split}/{w}/{f}" for f in _class_names(split, w, lo, hi)]
            labels += [c] * (hi - lo)
        out[split] = FolderSplit(root / split, wnids, tuple(files), np.asarray(labels, np.int64))
    return out


def _maxrss() -> int:
    """This process's peak RSS: VmHWM (of this exec's memory map; getrusage's ru_maxrss
    would carry the forking parent's peak across the exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) * 1024


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _streamed() -> bool:
    """The code under test has the streamed plan (issue 26)."""
    return importlib.util.find_spec("pixbench.data.workdir") is not None


def _plan(cfg, out: Path, root: Path, n: dict) -> Path:
    """The real make_plan on the synthetic listing (see the module doc): 1000 classes, fewer
    where a split has fewer images (a class folder without images is refused)."""
    from unittest import mock

    from pixbench.data import stream

    k = min(CLASSES, *n.values())
    if not _streamed():
        scans = synthetic_scans(root, n["train"], n["val"], k)
        with mock.patch.object(stream, "scan_image_folder", lambda r, s: scans[s]):
            return stream.make_plan(cfg, out, root)
    from pixbench.data import workdir

    def files(d: Path) -> list[str]:
        split, c = d.parent.name, _wnids(k).index(d.name)
        return [str(d / f) for f in _class_names(split, d.name, *_bounds(n[split], c, k))]

    with mock.patch.object(workdir, "_class_dirs", lambda sd: [sd / w for w in _wnids(k)]), \
            mock.patch.object(workdir, "_class_files", files), \
            mock.patch.object(workdir, "split_folder", lambda r, s: Path(r) / s), \
            mock.patch.object(Path, "is_dir", lambda self: True):
        return stream.make_plan(cfg, out, root)


def _write_markers(work: Path, plan: dict) -> None:
    """A done marker per chunk, as decode_chunk writes it (a real histogram's JSON); written
    plainly: the fixture, not the code measured."""
    import numpy as np

    from pixbench.data import stats, stream

    img = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    blob = json.dumps({"n": plan["chunk"], "gray": False, "bad": [],
                       "hist": stats.channel_hist(img).tolist()})
    marker = stream._marker if hasattr(stream, "_marker") else stream.workdir.marker  # noqa: SLF001
    shutil.rmtree(work / stream.DONE, ignore_errors=True)
    (work / stream.DONE).mkdir()
    for s, i in stream.chunk_ids(plan):
        marker(work, s, i).write_text(blob)


def child(work: str, n_train: str, n_val: str, sizes: str) -> None:
    """Run in a fresh process: prints the peak RSS over the post-import baseline after each
    phase of the parent (make_plan; decode; finish at each image size in `sizes`)."""
    import numpy as np

    from pixbench.config import DataConfig
    from pixbench.data import stream

    cfg = DataConfig(source="imagefolder", image_size=28, root=str(ROOT), allow_download=False,
                     skip_corrupt=False, channels="auto", fast_decode=None)
    base = _rss()
    n = {"train": int(n_train), "val": int(n_val)}
    wd = _plan(cfg, Path(work) / "cache", ROOT, n)
    w = _wnids()[0]
    chars = len(f"{ROOT}/train/{w}/{_class_names('train', w, 0, 1)[0]}")
    out = {"baseline_rss": base, "train_path_chars": chars, "make_plan": _maxrss() - base,
           "streamed": _streamed()}
    plan = stream.read_plan(wd)  # decode_chunks holds this while the workers decode
    args = (wd, plan, stream.chunk_ids(plan)) + (({"train": 128, "val": 128},) if _streamed()
                                                 else ())
    jobs = list(zip(range(4), stream._jobs(*args)))  # noqa: SLF001 - the parent's own state
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


def _env(src: Path | None) -> dict:
    """The child's environment: benchsuite importable, `src` (another checkout) first."""
    path = [str(src)] if src else []
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        path + [str(SUITE_PARENT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def measure(work: Path, ns: list[tuple[int, int]], sizes=(28, 256),
            src: Path | None = None) -> dict:
    """The child at each (n_train, n_val); bytes per image of each size's peak phase between
    the smallest and the largest N. `src`: measure another checkout's code (before a change)."""
    points = []
    for n_train, n_val in ns:
        d = work / f"state-{n_train}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        res = subprocess.run([sys.executable, "-c", CHILD, str(d), str(n_train), str(n_val),
                              ",".join(map(str, sizes))], env=_env(src), check=True,
                             capture_output=True, text=True)
        shutil.rmtree(d, ignore_errors=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        points.append({"n_train": n_train, "n_val": n_val, **row})
    a, b = points[0], points[-1]
    dn = max(1, b["n_train"] + b["n_val"] - a["n_train"] - a["n_val"])
    per = {f"{s}px": round((b[f"finish_{s}px"] - a[f"finish_{s}px"]) / dn, 1) for s in sizes}
    plan = round((b["make_plan"] - a["make_plan"]) / dn, 1)
    return {"points": points, "bytes_per_image": per, "make_plan_bytes_per_image": plan}


# ------------------------------------------------------------------ make_plan on real files


def files_child(root: str, out: str) -> None:
    """make_plan on a real tree: peak RSS over the post-import baseline, and wall time."""
    from pixbench.config import DataConfig
    from pixbench.data import stream

    cfg = DataConfig(source="imagefolder", image_size=28, root=root, allow_download=False,
                     skip_corrupt=False, channels="auto", fast_decode=None)
    base, t0 = _rss(), time.perf_counter()
    stream.make_plan(cfg, Path(out), Path(root))
    print(json.dumps({"make_plan": _maxrss() - base, "wall_s": round(time.perf_counter() - t0, 2)}))


def empty_tree(root: Path, n_train: int, n_val: int, classes: int = 100) -> Path:
    """`root/{train,val}/cNNN/<ImageNet-like name>.JPEG`, empty files: the scan reads names,
    not pixels."""
    if (root / "done").exists():
        return root
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(classes):
            d = root / split / f"n{1440764 + 7919 * c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for f in _class_names(split, d.name, *_bounds(n, c, classes)):
                (d / f).touch()
    (root / "done").write_text("")
    return root


def plan_on_files(work: Path, ns=((20_000, 1_000), (80_000, 4_000)),
                  src: Path | None = None) -> list[dict]:
    """make_plan's peak RSS and wall time on real trees of empty files at each N."""
    rows = []
    for n_train, n_val in ns:
        root = empty_tree(work / f"files-{n_train}", n_train, n_val)
        out = work / f"files-{n_train}-plan" / "cache"
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        res = subprocess.run([sys.executable, "-c", FILES_CHILD, str(root), str(out)],
                             env=_env(src), check=True, capture_output=True, text=True)
        shutil.rmtree(out.parent, ignore_errors=True)
        rows.append({"n_train": n_train, "n_val": n_val,
                     **json.loads(res.stdout.strip().splitlines()[-1])})
    return rows
