"""Scale rehearsal of the input pipeline (issue 15): can data/loader.py feed a GPU rank?

    pytest bench/test_scale_loader.py --benchmark-only    # ~1 min: reports/bench/scale-loader.*
    pytest bench/test_scale_loader.py --benchmark-skip    # the seconds-long smoke only

On a synthetic memory-mapped uint8 cache at 28px, each case produces one rank's shard of the
ImageNet-28 recipe's global batch (params.yaml, profile imagenet28: batch 1024, its
augmentation) over 8 ranks, the way training does (`StepBatches` through `batches`): in the
process, or in 1 and 2 loader workers. Throughput per core is images over CPU seconds (the
process's and its reaped workers' rusage, or the thread's CPU time in the process): robust on a
shared CPU, where wall time is not. Two pipelines:

- `cpu-augment`: gather + augment + standardise in the workers (training on the CPU);
- `gpu-path`: what stays on the CPU when training on a GPU: gather the uint8 rows and draw the
  augmentation parameters; the augmentation itself runs on the GPU (the pinned copy and the GPU
  work are not measured on this CPU-only machine).

Demand: what one ViT-S/2 at 28px consumes on an H100, from the analytic train FLOPs
(models/flops.py) at the project's MFU target (bench/targets.py) of the H100's dense bf16 peak;
the target is 3x that with at most 8 CPU cores per rank. A last case times a tiny CPU training
step (the default profile's model) with 0 and 1 loader workers: the CPU default's evidence.
"""

from __future__ import annotations

import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchsuite.targets import GPU_MFU_TARGET
from pixbench.config import load_params, make_classify_spec
from pixbench.data.loader import Rows, StepBatches, batches
from pixbench.models.flops import vit_train_flops
from pixbench.models.vit import vit_shape
from pixbench.runio import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA H100 SXM datasheet (1,979 TFLOPS is with sparsity)
IMAGENET_CLASSES = 1000
RANKS, FEED_FACTOR, MAX_CORES = 8, 3, 8


def recipe(profile: str, size: str, patch: int):
    params = load_params(ROOT / "params.yaml")
    return make_classify_spec(params.model_copy(update={"profile": profile}), size=size,
                              patch=patch, seed=0)


def demand(spec) -> dict:
    """img/s one H100 trains ViT-S/2 at 28px at GPU_MFU_TARGET of its dense bf16 peak."""
    shape = vit_shape(size=spec.size, patch=spec.patch, image_size=spec.data.image_size,
                      in_chans=3, num_classes=IMAGENET_CLASSES, pool=spec.classify.pool)
    flops = vit_train_flops(shape)
    img_s = GPU_MFU_TARGET * H100_BF16_DENSE / flops
    return {"model": f"ViT-{spec.size.upper()}/{spec.patch} at {spec.data.image_size}px",
            "train_gflops_per_img": flops / 1e9, "mfu": GPU_MFU_TARGET,
            "peak_tflops": H100_BF16_DENSE / 1e12, "img_per_s": img_s,
            "feed_target_img_per_s": FEED_FACTOR * img_s}


def synthetic_cache(folder: Path, n: int, size: int) -> Rows:
    """A memory-mapped (n, size, size, 3) uint8 split (random pixels: the cost is
    data-independent), seen through all its rows."""
    path = folder / "train_images.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    rng = np.random.default_rng(0)
    for i in range(0, n, 10_000):  # in chunks: never the whole split in memory
        arr[i:i + 10_000] = rng.integers(0, 256, arr[i:i + 10_000].shape, dtype=np.uint8)
    arr.flush()
    del arr
    return Rows(np.load(path, mmap_mode="r"), np.arange(n))


def rank_shard(images: Rows, spec, *, augment_here: bool) -> StepBatches:
    """Rank 0's view of the recipe's global batch over RANKS ranks."""
    b = spec.classify.batch_size
    mean, std = torch.full((3,), 0.45), torch.full((3,), 0.25)
    return StepBatches(images, None, batch_size=b, seed=0, epoch=0, first_step=0,
                       cfg=spec.classify.augment, mean=mean, std=std, augment_here=augment_here,
                       shard=slice(0, b // RANKS))


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(ds: StepBatches, workers: int, steps: int) -> dict:
    """Produce `steps` shards; workers=0 in this thread (1 torch thread, as a worker has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds[0]  # warm the page cache and the kernels
        c0, t0, w0 = _cpu_s(), time.thread_time(), time.perf_counter()
        n = sum(b.x.shape[0] for b in batches(ds, len(ds) - steps, workers=workers))
        wall = time.perf_counter() - w0
        cpu = time.thread_time() - t0 if workers == 0 else _cpu_s() - c0
    finally:
        torch.set_num_threads(threads)
    return {"workers": workers, "images": n, "cpu_s": cpu, "wall_s": wall,
            "img_per_s_per_core": n / cpu, "img_per_s_wall": n / wall}


def train_steps(workers: int, patch: int, steps: int) -> dict:
    """Wall time of `steps` CPU train steps of the default profile's classifier (fed by the
    loader) with 0 or 1 loader workers, on synthetic data of its shape."""
    from pixbench.models.vit import vit

    spec = recipe(load_params(ROOT / "params.yaml").profile, None, patch)
    s, c, b = spec.data.image_size, 1, spec.classify.batch_size
    torch.manual_seed(0)
    model = vit(size=spec.size, patch=patch, image_size=s, in_chans=c, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = Rows(np.random.default_rng(0).integers(0, 256, (b * (steps + 1), s, s, c),
                                                    dtype=np.uint8), np.arange(b * (steps + 1)))
    ds = StepBatches(images, torch.zeros(len(images), dtype=torch.long), batch_size=b, seed=0,
                     epoch=0, first_step=0, cfg=spec.classify.augment, mean=torch.full((c,), .3),
                     std=torch.full((c,), .3), augment_here=True)
    t0 = time.perf_counter()
    for i, batch in enumerate(batches(ds, 0, workers=workers)):
        if i == 1:  # from the second step: worker start-up and first-step costs apart
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch.x), batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"workers": workers, "model": f"ViT-{spec.size}/{patch} at {s}px, batch {b}",
            "s_per_step": (time.perf_counter() - t0) / steps}


def rehearse(out: Path, *, n_images: int, steps: int, train_steps_n: int) -> Path:
    """Every case; writes out/scale-loader.json and .md; returns the json path."""
    spec = recipe("imagenet28", "s", 2)
    need = demand(spec)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = synthetic_cache(Path(tmp), n_images, spec.data.image_size)
        for pipeline, here in (("cpu-augment", True), ("gpu-path", False)):
            ds = rank_shard(images, spec, augment_here=here)
            for w in (0, 1, 2):
                r = measure(ds, w, min(steps, len(ds) - 1))
                cores = need["feed_target_img_per_s"] / r["img_per_s_per_core"]
                rows.append({"pipeline": pipeline, **r, "cores_per_rank": cores,
                             "pass": cores <= MAX_CORES})
    train = [train_steps(w, p, train_steps_n) for p in (1, 4) for w in (0, 1)]
    # the headline: the most cores any worker configuration needs (workers overlap the step)
    verdict = {p: max(r["cores_per_rank"] for r in rows if r["pipeline"] == p and r["workers"])
               for p in ("cpu-augment", "gpu-path")}
    doc = {"schema": "pixbench.scale-loader/1", "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads_available": torch.get_num_threads(),
           "shard": {"global_batch": spec.classify.batch_size, "ranks": RANKS,
                     "rows": spec.classify.batch_size // RANKS, "image_size": spec.data.image_size,
                     "augment": spec.classify.augment.model_dump(), "cache_images": n_images},
           "demand": need, "max_cores_per_rank": MAX_CORES, "cores_per_rank": verdict,
           "pass": all(v <= MAX_CORES for v in verdict.values()), "cases": rows,
           "cpu_training": train}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale-loader.json"
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    atomic_write_bytes(path.with_suffix(".md"), markdown(doc).encode())
    return path


def markdown(doc: dict) -> str:
    d, sh = doc["demand"], doc["shard"]
    lines = [
        "# Loader scale rehearsal (bench/test_scale_loader.py)", "",
        f"Demand: {d['model']} trains at {d['img_per_s']:,.0f} img/s on one H100 "
        f"({d['train_gflops_per_img']:.1f} GFLOPs/img analytic, at {d['mfu']:.0%} of "
        f"{d['peak_tflops']:.0f} TFLOP/s bf16 dense); target: feed {FEED_FACTOR}x = "
        f"{d['feed_target_img_per_s']:,.0f} img/s per rank with <= {doc['max_cores_per_rank']} "
        "CPU cores.", "",
        f"**Result: {'PASS' if doc['pass'] else 'MISS'}** (with loader workers, the most cores "
        f"a rank needs): {doc['cores_per_rank']['cpu-augment']:.1f} cores with the augmentation "
        f"on the CPU, {doc['cores_per_rank']['gpu-path']:.1f} with it on the GPU.", "",
        f"Case: one rank's shard ({sh['rows']} rows) of a global batch {sh['global_batch']} over "
        f"{sh['ranks']} ranks, {sh['image_size']}px, augmentation {sh['augment']}, from a "
        f"memory-mapped uint8 cache of {sh['cache_images']:,} images. Per core = images / CPU "
        f"seconds (process + reaped workers). Machine: {doc['machine']}, "
        f"{doc['threads_available']} threads, torch {doc['torch']}; shared, so wall figures are "
        "indicative only.", "",
        "| pipeline | workers | img/s per core | img/s wall | cores per rank for the target | "
        "<= 8 |", "|---|---|---|---|---|---|"]
    for r in doc["cases"]:
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['img_per_s_per_core']:,.0f} | "
                     f"{r['img_per_s_wall']:,.0f} | {r['cores_per_rank']:.2f} | "
                     f"{'PASS' if r['pass'] else 'MISS'} |")
    lines += ["", "Rows with workers include handing each batch between processes (shared-memory "
              "tensors) and the workers' start-up, spread over the steps measured; the 0-worker "
              "row is the work alone, in one thread.",
              "", "`cpu-augment`: gather + augment + standardise on the CPU (training on the "
              "CPU). `gpu-path`: the CPU's share when training on a GPU, where the uint8 shard "
              "is copied (pinned, non_blocking) and augmented on the device: gather the rows "
              "and draw the parameters; the pinned copy and the GPU time are not measured here.",
              "", "CPU training with the loader in the process (0) or in 1 worker, wall s/step:",
              "", "| model | workers | s/step |", "|---|---|---|"]
    lines += [f"| {t['model']} | {t['workers']} | {t['s_per_step']:.4f} |"
              for t in doc["cpu_training"]]
    return "\n".join(lines) + "\n"


def test_scale_loader_smoke(tmp_path):
    """Seconds: every case runs and the report holds positive figures."""
    doc = json.loads(rehearse(tmp_path, n_images=4_096, steps=2, train_steps_n=2).read_text())
    assert doc["demand"]["img_per_s"] > 0 and len(doc["cases"]) == 6
    assert all(r["img_per_s_per_core"] > 0 and r["images"] == 2 * 128 for r in doc["cases"])
    assert "| gpu-path | 2 |" in (tmp_path / "scale-loader.md").read_text()


@pytest.mark.benchmark(group="scale-loader")
def test_scale_loader_rehearsal(benchmark):
    """The rehearsal; figures to reports/bench/scale-loader.{json,md}."""
    path = benchmark.pedantic(rehearse, args=(ROOT / "reports" / "bench",),
                              kwargs=dict(n_images=200_000, steps=150, train_steps_n=40),
                              rounds=1, iterations=1)
    doc = json.loads(path.read_text())
    benchmark.extra_info.update({f"{r['pipeline']}-w{r['workers']}": r["img_per_s_per_core"]
                                 for r in doc["cases"]})
    assert all(r["img_per_s_per_core"] > 0 for r in doc["cases"])
