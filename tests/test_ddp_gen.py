"""Data parallel on CPU for the generation track: each task run by 2 gloo processes equals the
same task run by one process, and only rank 0 writes.

One 1-process pipeline (vq train -> vq encode -> featnet -> dit train -> dit eval, vq eval) is
built once; then ONE spawn of 2 ranks runs every task, each task in its own workspace seeded
with copies of the 1-process upstream run dirs, so each task is compared on identical inputs.
Every rank has its own runs/, data/ and reports/ copies: rank 1's must be untouched afterwards
(no file added or rewritten), which is "exactly one writer" without trusting the code's guards.
Except vq-encode (SHARED): it streams latents to disk with every rank writing its own rows of
files rank 0 preallocated, so both ranks work in rank 0's copy, as they share runs/ on a cluster.

Tolerances (why not bitwise: DDP sums the ranks' gradients, and the global batch norm and the
adaptive GAN weight reduce in another order than one process does):
- featnet and DiT weights: allclose atol 1e-5 (measured: 2e-7 and 3e-8);
- VQ: the gradients of one step (GAN on) within 1e-5 (generator) / 1e-4 (discriminator) of the
  largest gradient (measured 1.3e-6 / 1.5e-5; per-shard batch norm would be off by 5e-2); the
  trained weights only within atol 1e-2, because Adam turns noise-level gradients (biases a
  GroupNorm cancels) into +-lr steps (one process with 1 vs 2 threads differs by 3e-3 too), so
  the tokenizer's function is compared instead: identical codes, reconstructions within 0.02;
- metrics and curves: rel 1e-4 (abs 1e-6 for near-zero FIDs; the VQ adaptive weight rel 1e-3);
  integers (steps, restarts, codes, labels) exactly;
- encoded latents atol 1e-5 and sampled / reconstructed uint8 images within 1 grey level
  (measured: identical: chunks are computed the same way on whichever rank).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_GEN, TINY_GEN_SWEEP, TINY_PARAMS, make_tiny_cache, write_params

from pixbench.config import (Paths, load_params, make_dit_eval_spec, make_dit_spec,
                             make_encode_spec, make_featnet_spec, make_vq_eval_spec, make_vq_spec)

SHARED = {"vq-encode"}  # tasks whose ranks write disjoint rows of the same files
TASKS = ("vq", "vq-encode", "featnet", "dit", "dit-eval", "vq-eval", "vq-step")  # pipeline order
UPSTREAM = {"vq": (), "vq-encode": ("vq",), "featnet": (), "dit": ("vq", "vq-encode", "featnet"),
            "dit-eval": ("vq", "vq-encode", "featnet", "dit"), "vq-eval": ("vq", "featnet"),
            "vq-step": ("vq",)}
TIME_KEYS = {"train_s", "wall_s", "train_img_per_s", "train_time_s", "encode_s",
             "recon_img_per_s", "sample_img_per_s", "score_s"}
SMALL_CHUNKS = {"tokenizer": 32, "featnet": 8}  # several chunks per split, so ranks share them


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_chunks() -> None:
    """Encode / score in chunks small enough that both ranks get some (same in both runs)."""
    from pixbench.tasks.gen import featnet, tokenizer

    tokenizer.CHUNK, featnet.EVAL_CHUNK = SMALL_CHUNKS["tokenizer"], SMALL_CHUNKS["featnet"]


def _vq_step(spec, paths: Paths, *, progress: bool, device: str) -> dict:
    """One VQ train step (GAN on) from the trained tokenizer's checkpoint; rank 0 saves the
    gradients it leaves (DDP-averaged) beside the run: Adam turns noise-level gradient
    differences into lr-sized weight differences, so gradients are where DDP is checked tightly."""
    from pixbench import distributed
    from pixbench.rng import batch_indices, generator
    from pixbench.tasks.gen import vq
    from pixbench.tasks.gen.data import gen_cache, to_unit
    from pixbench.tasks.trainer import rank_mean_list

    ds = gen_cache(paths, spec.profile, spec.data.model_dump())
    tr = vq.VQTrainer(spec, ds.channels, torch.device(device))
    run_dir = paths.run_dir(spec.profile, spec.run_id)
    ckpt = torch.load(run_dir / "ckpt" / "last.pt", weights_only=True)["modules"]
    tr.gen.load_state_dict(ckpt["generator"])
    tr.disc.load_state_dict(ckpt["discriminator"])
    step, b = spec.vq.steps, spec.vq.batch_size  # past disc_start_step: the GAN terms are on
    idx = distributed.shard(batch_indices(ds.train_images.shape[0], b, spec.seed, step))
    x = to_unit(ds.train_images[idx.numpy()])  # (B / world, C, H, W)
    out = vq.train_step(tr, x, step, generator(spec.seed + 1, step))
    # the step's tensors are this rank's; the trainer averages them over ranks at its sync
    out = {k: rank_mean_list([float(v)])[0] if isinstance(v, torch.Tensor) else v
           for k, v in out.items()}
    grads = {f"{n}.{k}": p.grad for n, m in (("gen", tr.gen), ("disc", tr.disc))
             for k, p in m.named_parameters()}
    if distributed.is_main():
        torch.save({"grads": grads, "last_used": tr.gen.last_used}, run_dir.parent / "vq-step.pt")
    return out


def _call(task: str, params):
    from pixbench.tasks.gen import dit, dit_eval, featnet, latents, vq

    cell = dict(size=None, patch=2, seed=0)
    return {"vq": (vq.run, make_vq_spec(params)),
            "vq-encode": (latents.run_encode, make_encode_spec(params)),
            "featnet": (featnet.run, make_featnet_spec(params)),
            "dit": (dit.run, make_dit_spec(params, **cell)),
            "dit-eval": (dit_eval.run_eval, make_dit_eval_spec(params, **cell)),
            "vq-eval": (latents.run_eval, make_vq_eval_spec(params)),
            "vq-step": (_vq_step, make_vq_spec(params))}[task]


def _use(base: Path) -> None:
    os.environ.update(PIXBENCH_RUNS_DIR=str(base / "runs"), PIXBENCH_CACHE_DIR=str(base / "data"),
                      PIXBENCH_REPORTS_DIR=str(base / "reports"))


def _worker(rank: int, world: int, port: int, root: str, params_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        _small_chunks()
        for task in TASKS:
            _use(Path(root) / task / f"rank{0 if task in SHARED else rank}")
            run, spec = _call(task, load_params(params_path))
            metrics = run(spec, Paths(), progress=False, device="cpu")
            (Path(root) / task / f"returned{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def _snapshot(base: Path) -> dict:
    return {str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(base.rglob("*"))}


def _single_process(single: Path, params_path: Path) -> dict:
    """Every task on one process under `single`; returns the run ids."""
    from pixbench.tasks.gen import featnet, tokenizer

    with pytest.MonkeyPatch.context() as mp_:
        for k in ("PIXBENCH_RUNS_DIR", "PIXBENCH_CACHE_DIR", "PIXBENCH_REPORTS_DIR"):
            mp_.setenv(k, os.environ.get(k, ""))  # restored on exit
        _use(single)
        mp_.setattr(tokenizer, "CHUNK", SMALL_CHUNKS["tokenizer"])
        mp_.setattr(featnet, "EVAL_CHUNK", SMALL_CHUNKS["featnet"])
        ids = {}
        for task in TASKS:
            run, spec = _call(task, load_params(params_path))
            run(spec, Paths(), progress=False, device="cpu")
            ids[task] = spec.run_id
    return ids


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """(1-process runs/tiny, 2-rank root, run ids, rank 1 trees before the spawn): both run."""
    root = tmp_path_factory.mktemp("ddp-gen")
    single = root / "single"
    params = copy.deepcopy(TINY_PARAMS)  # what conftest's gen_project writes
    params["profiles"]["tiny"]["gen"] = copy.deepcopy(TINY_GEN)
    params["profiles"]["tiny"]["gen"]["featnet"]["batch_size"] = 25  # 128 = 5*25 + 3: uneven shards
    params["gen_sweep"] = dict(TINY_GEN_SWEEP)
    make_tiny_cache(single / "data" / "tiny-gen", TINY_GEN["data"], n_train=128, n_val=32)
    params_path = write_params(root / "params.yaml", params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: then only the ranks' reduction order differs
    try:
        ids = _single_process(single, params_path)
    finally:
        torch.set_num_threads(threads)
    ddp_root = root / "ddp"
    for task in TASKS:
        for rank in (0, 1):
            base = ddp_root / task / f"rank{rank}"
            shutil.copytree(single / "data" / "tiny-gen", base / "data" / "tiny-gen")
            for up in UPSTREAM[task]:
                shutil.copytree(single / "runs" / "tiny" / ids[up], base / "runs" / "tiny" / ids[up])
            (base / "reports").mkdir()
    before = {t: _snapshot(ddp_root / t / "rank1") for t in TASKS}
    mp.spawn(_worker, args=(2, _free_port(), str(ddp_root), str(params_path)), nprocs=2, join=True)
    return single / "runs" / "tiny", ddp_root, ids, before


def _dirs(ddp, task: str) -> tuple[Path, Path]:
    single, ddp_root, ids, _ = ddp
    return single / ids[task], ddp_root / task / "rank0" / "runs" / "tiny" / ids[task]


def _returned(ddp, task: str) -> list[dict]:
    """What each rank's call returned, after checking that rank 1 wrote nothing."""
    _, ddp_root, _, before = ddp
    assert _snapshot(ddp_root / task / "rank1") == before[task], "rank 1 wrote files"
    return [json.loads((ddp_root / task / f"returned{r}.json").read_text()) for r in (0, 1)]


def _check_common(ddp, task: str) -> dict:
    """One writer, world size 2 recorded, every rank returned rank 0's metrics; the metrics
    equal the 1-process ones (scalars rel 1e-4, everything else exactly)."""
    one, two = _dirs(ddp, task)
    returned = _returned(ddp, task)
    assert json.loads((two / "manifest.json").read_text())["world_size"] == 2
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    for m in returned:
        assert {k: v for k, v in m.items() if k not in TIME_KEYS} == \
            {k: v for k, v in m2.items() if k not in TIME_KEYS}
    for k in set(m1) - TIME_KEYS:
        if isinstance(m1[k], float):
            assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
        else:
            assert m2[k] == m1[k], k
    return m2


def _close(a: dict, b: dict, atol: float, rtol: float = 0.0) -> float:
    """Max |a - b| over a state dict's float tensors (integer tensors must be equal)."""
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=atol, rtol=rtol), k
            worst = max(worst, float((a[k] - b[k]).abs().max()))
        else:
            assert torch.equal(a[k], b[k]), k
    return worst


def _ckpt(d: Path) -> dict:
    return torch.load(d / "ckpt" / "last.pt", weights_only=True)["modules"]


def test_vq_step_gradients(ddp) -> None:
    """One VQ step with the GAN on: the DDP-averaged generator gradients (rec + VQ + adaptive
    GAN term) and discriminator gradients (global-batch BN) equal one process's, and both
    ranks restart the same dead codes."""
    single, ddp_root, _, _ = ddp
    r0, r1 = _returned(ddp, "vq-step")
    one = torch.load(single / "vq-step.pt", weights_only=True)
    two = torch.load(ddp_root / "vq-step" / "rank0" / "runs" / "tiny" / "vq-step.pt",
                     weights_only=True)
    assert r0 == r1  # the step's values are rank means: the same on both ranks
    # atol relative to the model's largest gradient: 1e-5 (generator), 1e-4 (discriminator: its
    # batch norm statistics come from another formula than torch's kernel); with per-shard
    # batch norm instead of the global one the discriminator is off by 5e-2.
    for model, tol in (("gen", 1e-5), ("disc", 1e-4)):
        grads = {k: g for k, g in one["grads"].items() if k.startswith(model)}
        # the scale of the model's gradients: a bias before a GroupNorm gets ~1e-9 of noise
        scale = max(float(g.abs().max()) for g in grads.values())
        worst = max(float((g - two["grads"][k]).abs().max()) for k, g in grads.items())
        print(f"vq step {model}: max |grad diff| {worst:.2e}, max |grad| {scale:.2e}")
        for k, g in grads.items():
            assert torch.allclose(two["grads"][k], g, rtol=1e-4, atol=tol * scale), k
    assert torch.equal(one["last_used"], two["last_used"])


def test_vq_train(ddp) -> None:
    """8 steps, GAN from step 4, dead-code restarts. Weights: atol 1e-2 (5 x lr), because
    parameters whose gradient the GroupNorm after them cancels get noise-level gradients that
    Adam turns into +-lr steps (one process with 1 vs 2 threads differs by 3e-3 as well); the
    tokenizer's function is compared tightly instead: same codes, reconstructions within 0.02
    (2.5 grey levels); the loss curve rel 1e-4 (the adaptive weight, a ratio of gradient
    norms, rel 1e-3)."""
    from safetensors.torch import load_file

    from pixbench.tasks.gen.tokenizer import encode_images, load_tokenizer

    m = _check_common(ddp, "vq")
    one, two = _dirs(ddp, "vq")
    assert m["code_restarts"] > 0  # restarts ran, identically on both ranks (else gloo hangs)
    assert torch.equal(_ckpt(one)["generator"]["last_used"], _ckpt(two)["generator"]["last_used"])
    w = "tokenizer/diffusion_pytorch_model.safetensors"
    print("vq max |diff|", _close(load_file(one / w), load_file(two / w), 1e-2),
          _close(_ckpt(one)["discriminator"], _ckpt(two)["discriminator"], 1e-2))
    c1, c2 = (json.loads((d / "curve.json").read_text()) for d in (one, two))
    for r1, r2 in zip(c1, c2, strict=True):
        for k in ("rec_l1", "vq", "d_loss", "restarts"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-4), k
        assert r2["d_weight"] == pytest.approx(r1["d_weight"], rel=1e-3)
    images = np.load(one.parents[2] / "data" / "tiny-gen" / "val_images.npy")
    (la, ca), (lb, cb) = (encode_images(load_tokenizer(d / "tokenizer"), images) for d in (one, two))
    assert np.array_equal(ca, cb)
    with torch.no_grad():
        ra, rb = (load_tokenizer(d / "tokenizer").decode(torch.from_numpy(z)).sample
                  for d, z in ((one, la), (two, lb)))  # (N, C, H, W) in [-1, 1]
    print("vq reconstruction max |diff|", float((ra - rb).abs().max()))
    assert torch.allclose(ra, rb, atol=0.02)


def test_vq_encode(ddp) -> None:
    _check_common(ddp, "vq-encode")
    one, two = _dirs(ddp, "vq-encode")
    for split in ("train", "val"):
        a, b = (np.load(d / f"{split}_latents.npy") for d in (one, two))
        assert np.array_equal(a, b)  # the same chunks, encoded on whichever rank
        assert not (two / ".encode-tmp").exists()
        for kind in ("codes", "labels"):
            assert np.array_equal(*(np.load(d / f"{split}_{kind}.npy") for d in (one, two)))


def test_featnet(ddp) -> None:
    _check_common(ddp, "featnet")
    one, two = _dirs(ddp, "featnet")
    a, b = (torch.load(d / "featnet.pt", weights_only=True)["state_dict"] for d in (one, two))
    print("featnet max |diff|", _close(a, b, 1e-5))


def test_dit_train(ddp) -> None:
    _check_common(ddp, "dit")
    one, two = _dirs(ddp, "dit")
    a, b = (torch.load(d / "ema.pt", weights_only=True)["ema"] for d in (one, two))
    print("dit max |diff|", _close(a, b, 1e-5), _close(_ckpt(one)["model"], _ckpt(two)["model"], 1e-5))
    c1, c2 = (json.loads((d / "curve.json").read_text()) for d in (one, two))
    assert [r["step"] for r in c1] == [r["step"] for r in c2] == [3, 6]
    for r1, r2 in zip(c1, c2):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["fid_featnet"] == pytest.approx(r1["fid_featnet"], rel=1e-4, abs=1e-6)


def test_dit_eval(ddp) -> None:
    _check_common(ddp, "dit-eval")
    one, two = _dirs(ddp, "dit-eval")
    a, b = (np.load(d / "samples.npz") for d in (one, two))
    assert np.array_equal(a["labels"], b["labels"])
    diff = np.abs(a["images"].astype(int) - b["images"].astype(int))
    print("dit eval: max grey-level diff", diff.max(), "share differing", (diff > 0).mean())
    assert diff.max() <= 1


def test_vq_eval(ddp) -> None:
    _check_common(ddp, "vq-eval")
    one, two = _dirs(ddp, "vq-eval")
    a, b = (np.load(d / "reconstructions.npz") for d in (one, two))
    assert np.abs(a["reconstruction"].astype(int) - b["reconstruction"].astype(int)).max() <= 1
