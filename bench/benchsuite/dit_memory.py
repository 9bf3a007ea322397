"""Per-rank peak memory of the DiT track as N grows (issue 26): training on N latents, and
scoring / evaluating N samples, on W gloo ranks of this CPU.

A plan (JSON) names a project (params.yaml, PIXBENCH_* dirs) and phases; `run_plan` runs it in
a fresh interpreter (PYTHONPATH: the pixbench source to measure, so the code before a change
is measured the same way), which starts W fresh rank processes per phase, so that a rank's
peak is its phase's (imports and start-up alike in every phase). Each rank reads
/proc/self/status at the end: VmHWM (peak resident set: private memory plus the file pages it
has mapped), RssAnon and RssFile (private and file-backed at the end), and VmRSS before the
phase's work (after imports and setup).

Phases:
- `train`: `dit train` (DiT steps only, no curve probe) on a runs dir whose latents dir holds N
  synthetic latents (write_latents: the project's own .npy writer, data/npyfile.py);
- `score`: every rank draws its chunks of N synthetic uint8 samples (chunk-seeded, so a rank
  only ever makes its own), writes samples.npz and scores them (write_samples + score_samples,
  FeatNet metrics: FID, IS, KID, precision/recall); rank 0 keeps the metrics;
- `eval`: `dit eval` end to end (sampling, decoding, samples.npz, scoring) on a project with a
  trained tokenizer, FID classifier and DiT (setup_project).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
SRC, TOOLS = BENCH.parent / "src", BENCH.parent / "tools"
MIB = 1 << 20
MALLOC_MMAP_THRESHOLD = 1 << 16  # bytes: larger allocations are mapped, and unmapped when freed


def proc_status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) / 1024
    return out


def write_latents(runs: Path, profile: str, tokenizer: dict, n: int, shape: tuple[int, ...],
                  classes: int, scale: float = 0.5) -> int:
    """N synthetic train latents (n, *shape) float32 + labels for `tokenizer` ({run_id,
    digest}) in its latents dir, with the manifest `vq encode` writes (hashes, sizes); rows are
    written a block at a time (never the whole split in memory). Returns the file's bytes."""
    import numpy as np

    from pixbench.data import npyfile
    from pixbench.data.cache import quick_sha256, sha256_file

    where = Path(runs) / profile / f"{tokenizer['run_id']}-latents"
    where.mkdir(parents=True, exist_ok=True)
    lat = where / "train_latents.npy"
    offset = npyfile.create(lat, np.float32, (n, *shape))
    rng = np.random.default_rng(0)
    for i in range(0, n, 4096):
        rows = rng.standard_normal((min(4096, n - i), *shape), dtype=np.float32) / scale
        npyfile.write_rows(lat, offset, i, rows)
    np.save(where / "train_labels.npy", np.arange(n, dtype=np.int64) % classes)
    files = {}
    for name in ("train_latents.npy", "train_labels.npy"):
        size = (where / name).stat().st_size
        files[name] = {"shape": list(np.load(where / name, mmap_mode="r").shape),
                       "sha256": sha256_file(where / name), "bytes": size,
                       "quick_sha256": quick_sha256(where / name, size)}
    man = {"run_id": f"{tokenizer['run_id']}-latents", "tokenizer": tokenizer["run_id"],
           "tokenizer_digest": tokenizer["digest"], "latent_shape": list(shape),
           "scale_factor": scale, "num_classes": classes,
           "classes": [f"c{i}" for i in range(classes)], "files": files}
    (where / "latents.json").write_text(json.dumps(man))
    return files["train_latents.npy"]["bytes"]


def project_env(base: Path) -> dict[str, str]:
    return {"PIXBENCH_RUNS_DIR": str(base / "runs"), "PIXBENCH_CACHE_DIR": str(base / "data"),
            "PIXBENCH_REPORTS_DIR": str(base / "reports")}


def run_plan(plan: dict, work: Path, *, src: Path = SRC, timeout: float = 1800) -> list[dict]:
    """Run `plan` ({params, world, phases: [{kind, base, n, ...}]}) on plan["world"] ranks with
    the pixbench at `src`; returns one row per (phase, rank)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "plan.json"
    path.write_text(json.dumps({**plan, "out": str(work / "rows")}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(BENCH), str(TOOLS)]),
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1",
           # glibc's dynamic mmap threshold keeps freed batch buffers (tens of MB) in the heap
           # depending on how many batches ran: a fixed one makes the peak follow live memory
           "MALLOC_MMAP_THRESHOLD_": str(MALLOC_MMAP_THRESHOLD)}
    proc = subprocess.run([sys.executable, "-m", "benchsuite.dit_memory", str(path)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"dit memory plan failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = []
    for f in sorted((work / "rows").glob("phase*-rank*.json")):
        rows.append(json.loads(f.read_text()))
    return sorted(rows, key=lambda r: (r["phase"], r["rank"]))


# ---------------------------------------------------------------------------- in the ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, plan: dict) -> None:
    """One rank of one phase (plan["phase"]), in a fresh process: its peak is the phase's."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    phase, comm = plan["phase"], _trace_collectives(dist)
    try:
        os.environ.update(project_env(Path(phase["base"])))
        prepared = PHASES[phase["kind"]][0](phase, plan)
        dist.barrier()
        before, t0 = proc_status(), time.perf_counter()
        result = PHASES[phase["kind"]][1](phase, plan, prepared)
        st, wall = proc_status(), time.perf_counter() - t0
        dist.barrier()
    finally:
        dist.destroy_process_group()
    row = {"phase": plan["index"], "kind": phase["kind"], "n": phase["n"], "rank": rank,
           "world": world, "peak_mib": st["VmHWM"], "before_mib": before["VmRSS"],
           "anon_mib": st["RssAnon"], "file_mib": st["RssFile"], "wall_s": wall,
           "result": result, "largest_all_gather_bytes": comm["gathered"],
           "sent_bytes": comm["sent"]}
    out = Path(plan["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"phase{plan['index']}-rank{rank}.json").write_text(json.dumps(row))


def _trace_collectives(dist) -> dict:
    """Count what this rank moves: the largest tensor it all-gathers (an all-gather of images
    would put them on every rank) and the bytes it sends point to point (to rank 0)."""
    comm = {"gathered": 0, "sent": 0}
    all_gather, send = dist.all_gather, dist.send

    def traced_all_gather(out, t, *a, **k):
        comm["gathered"] = max(comm["gathered"], t.numel() * t.element_size())
        return all_gather(out, t, *a, **k)

    def traced_send(t, *a, **k):
        comm["sent"] += t.numel() * t.element_size()
        return send(t, *a, **k)

    dist.all_gather, dist.send = traced_all_gather, traced_send
    return comm


def _nothing(phase: dict, plan: dict):
    return None


def _train(phase: dict, plan: dict, prepared) -> dict:
    from pixbench.config import Paths, load_params, make_dit_spec
    from pixbench.tasks.gen import dit

    spec = make_dit_spec(load_params(plan["params"]), size=None, patch=phase.get("patch", 2),
                         seed=0)
    m = dit.run(spec, Paths(), progress=False, device="cpu")
    return {"train_loss": m["train_loss"]}


def _eval(phase: dict, plan: dict, prepared) -> dict:
    from pixbench.config import Paths, load_params, make_dit_eval_spec
    from pixbench.tasks.gen import dit_eval

    spec = make_dit_eval_spec(load_params(phase.get("params", plan["params"])), size=None,
                              patch=phase.get("patch", 2), seed=0)
    m = dit_eval.run_eval(spec, Paths(), progress=False, device="cpu")
    return {k: v for k, v in m.items() if k.endswith("_featnet") or k.startswith("isc_")}


def _score_prepare(phase: dict, plan: dict):
    """The sampling context of `score` (no tokenizer: the samples are synthetic)."""
    from pixbench.config import Paths, load_params, make_featnet_spec
    from pixbench.tasks.gen.featnet import featnet_path, reference_cache_name
    from pixbench.tasks.gen.sampling import SamplingContext

    params = load_params(plan["params"])
    gen, paths = params.active.gen, Paths()
    ref = {"run_id": make_featnet_spec(params).run_id, "digest": make_featnet_spec(params).digest()}
    return SamplingContext(None, 1.0, (4, 1, 1), 4, gen.sample, gen.fid,
                           featnet_path(paths, params.profile, ref),
                           reference_cache_name(params.profile, gen.fid, ref), paths,
                           params.profile, gen.data.model_dump(), None, None)


def synthetic_chunk(b: int, start: int, stop: int, side: int, classes: int = 4) -> tuple:
    """Chunk b of the synthetic samples: uint8 (stop - start, 3, side, side) from seed b, like
    the test caches' images (noise and a bright band per class) with a random brightness per
    sample, so that FeatNet features (global averages) vary from sample to sample."""
    import numpy as np
    import torch
    from gpucheck.data import synthetic_split

    images, _ = synthetic_split(stop - start, side, classes, 1000 + b, channels=3)
    shift = np.random.default_rng(b).integers(-60, 60, (stop - start, 1, 1, 1))
    images = (images.astype(np.int16) + shift).clip(0, 255).astype(np.uint8)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),)  # (b, 3, side, side)


def _score(phase: dict, plan: dict, ctx) -> dict:
    import functools

    import torch

    from pixbench.tasks.gen.parallel import chunked_local
    from pixbench.tasks.gen.dit_eval import write_samples
    from pixbench.tasks.gen.sampling import class_labels, score_samples

    n, side, chunk = phase["n"], phase["side"], ctx.sample.batch_size
    empty = (torch.zeros(0, 3, side, side, dtype=torch.uint8),)
    (images,) = chunked_local(n, chunk, functools.partial(synthetic_chunk, side=side), empty)
    out = Path(phase["base"]) / "runs" / f"samples-{n}.npz"
    write_samples(out, images, class_labels(n, ctx.num_classes), chunk, root=out.parent)
    return score_samples(images, ctx, full=True)


PHASES = {"train": (_nothing, _train), "eval": (_nothing, _eval),
          "score": (_score_prepare, _score)}


def main(plan_path: str) -> None:
    """Every phase of the plan on plan["world"] fresh rank processes, one phase after the
    other (a process's peak RSS then is its phase's, imports included alike)."""
    import torch.multiprocessing as mp

    plan = json.loads(Path(plan_path).read_text())
    for i, phase in enumerate(plan["phases"]):
        one = {**plan, "phase": phase, "index": i}
        mp.spawn(_rank, args=(plan["world"], _free_port(), one), nprocs=plan["world"], join=True)


if __name__ == "__main__":
    main(sys.argv[1])
