"""Memory per rank of the DiT track (issue 26), on 2 gloo ranks of this CPU.

- Training: a batch's latent rows are read from the file and scaled as drawn, so a rank's peak
  RSS must not follow the latents file: 10k vs 40k synthetic latents of 4x16x16 float32 (40 vs
  160 MiB; loading the split and scaling a copy, as before, added the file once to twice per
  rank).
- Scoring: every rank keeps and scores its own samples; only FID's sums and the set metrics'
  features reach rank 0, and samples.npz is written by rank 0 a chunk at a time. Checked by
  what the ranks move (no all-gather bigger than a few bytes, rank 1 sends features, far fewer
  bytes than its images), by the peak RSS from 1k to 4k samples of 3x96x96 (a rank's growth is
  its own share, not the whole set), and against one process: the same samples.npz, metrics
  equal up to float summation order. With more ranks than chunks, the hand-overs to rank 0
  still line up (a rank with nothing sends nothing).

The harness (each phase in fresh rank processes: a peak is its phase's) is bench/benchsuite/
dit_memory.py, whose rehearsal (bench/test_scale_dit_memory.py) measures the same from 10k to
40k latents with the code before and after.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_GEN, TINY_GEN_SWEEP, TINY_PARAMS, make_tiny_cache, write_params

from benchsuite import dit_memory as dm

N_SMALL, N_LARGE = 10_000, 40_000
LATENT = (4, 16, 16)  # 4 KiB each: the 40k file is 160 MiB
SAMPLES_SMALL, SAMPLES_LARGE, SIDE = 1_000, 4_000, 96  # 27 KiB a sample: 4k = 105 MiB
MIB = 1 << 20


def gen_params() -> dict:
    """The tiny gen profile at 64 px (4x down-sampling: the 16x16 latents above)."""
    params = copy.deepcopy(TINY_PARAMS)
    gen = copy.deepcopy(TINY_GEN)
    gen["data"]["image_size"] = 64
    gen["dit"].update(steps=2, batch_size=16, curve_every_steps=None)
    gen["sample"].update(batch_size=250, num_samples=SAMPLES_LARGE)
    gen["fid"].update(reference_images=256, kid_subset_size=100)
    gen["featnet"].update(epochs=4, batch_size=64)  # 1 epoch: collapsed features
    params["profiles"]["tiny"]["gen"] = gen
    params["gen_sweep"] = dict(TINY_GEN_SWEEP)
    return params


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """2 ranks, fresh processes per phase: train on 10k then 40k latents, score 1k then 4k
    samples; (rows, latents file bytes, params path, the scoring project)."""
    from pixbench.config import Paths, load_params, make_dit_spec, make_featnet_spec
    from pixbench.tasks.gen import featnet

    root = tmp_path_factory.mktemp("gen-memory")
    params_path = write_params(root / "params.yaml", gen_params())
    params = load_params(params_path)
    score_base = root / "score"
    make_tiny_cache(score_base / "data" / "tiny-gen", params.active.gen.data.model_dump(),
                    n_train=512, n_val=64)
    with pytest.MonkeyPatch.context() as mp_:
        for k, v in dm.project_env(score_base).items():
            mp_.setenv(k, v)
        featnet.run(make_featnet_spec(params), Paths(), progress=False, device="cpu")
    tok = make_dit_spec(params, size=None, patch=2, seed=0).tokenizer
    sizes = {n: dm.write_latents(root / f"train-{n}" / "runs", "tiny", tok, n, LATENT, 4)
             for n in (N_SMALL, N_LARGE)}
    phases = [{"kind": "train", "n": n, "base": str(root / f"train-{n}")}
              for n in (N_SMALL, N_LARGE)]
    phases += [{"kind": "score", "n": n, "side": SIDE, "base": str(score_base)}
               for n in (SAMPLES_SMALL, SAMPLES_LARGE)]
    rows = dm.run_plan({"params": str(params_path), "world": 2, "phases": phases},
                       root / "measure")
    return rows, sizes, params_path, score_base


def _peaks(rows: list[dict], kind: str) -> dict[int, dict[int, float]]:
    """{rank: {n: peak MiB}} of a phase kind."""
    out: dict[int, dict[int, float]] = {}
    for r in rows:
        if r["kind"] == kind:
            out.setdefault(r["rank"], {})[r["n"]] = r["peak_mib"]
    return out


def test_dit_train_peak_rss_does_not_follow_the_latents(measured) -> None:
    """4x the latents, the same peak on every rank (measured: within a few MiB)."""
    rows, sizes, _, _ = measured
    grown = (sizes[N_LARGE] - sizes[N_SMALL]) / MIB  # 120 MiB more file
    for rank, peak in _peaks(rows, "train").items():
        growth = peak[N_LARGE] - peak[N_SMALL]
        print(f"train rank {rank}: peak {peak[N_SMALL]:.0f} -> {peak[N_LARGE]:.0f} MiB "
              f"({growth:+.1f} MiB for {grown:.0f} MiB more latents)")
        assert growth < 0.1 * grown  # a copy of the split: +120 MiB (+240 while scaling it)


def test_scoring_moves_features_not_images(measured) -> None:
    """No images in an all-gather; rank 1 sends its samples once (to samples.npz) plus their
    features, and holds its own half. (Rank 0 also scores: its growth is mostly
    torch-fidelity's precision/recall distance matrices, N x N, as in one process.)"""
    rows, _, _, _ = measured
    image_bytes = {n: n * 3 * SIDE * SIDE for n in (SAMPLES_SMALL, SAMPLES_LARGE)}
    peaks = _peaks(rows, "score")
    for r in (r for r in rows if r["kind"] == "score"):
        print(f"score n={r['n']} rank {r['rank']}: peak {r['peak_mib']:.0f} MiB, largest "
              f"all-gather {r['largest_all_gather_bytes']} B, sent {r['sent_bytes'] / MIB:.2f} "
              "MiB")
        assert r["largest_all_gather_bytes"] <= 64  # sample counts, never rows of images
        if r["rank"] == 1:  # its features, sums and samples.npz pieces reach rank 0
            own = image_bytes[r["n"]] / 2
            assert r["sent_bytes"] < 1.2 * own  # its samples once (samples.npz), not more
    full = (image_bytes[SAMPLES_LARGE] - image_bytes[SAMPLES_SMALL]) / MIB
    growth = {rank: peak[SAMPLES_LARGE] - peak[SAMPLES_SMALL] for rank, peak in peaks.items()}
    print(f"score: {growth} MiB for {full:.0f} MiB more samples in all")
    assert growth[1] < 0.8 * full  # its half (+ features); gathered it was the whole set


def test_two_ranks_score_as_one_process(measured, monkeypatch) -> None:
    """Rank 0's metrics equal one process's on the same samples (float summation order:
    features batch differently on each rank), and samples.npz holds the same arrays."""
    import functools

    from pixbench.tasks.gen.parallel import chunked_local
    from pixbench.tasks.gen.sampling import class_labels, score_samples

    rows, _, params_path, base = measured
    for k, v in dm.project_env(base).items():
        monkeypatch.setenv(k, v)
    plan = {"params": str(params_path)}
    ctx = dm._score_prepare({}, plan)
    empty = (torch.zeros(0, 3, SIDE, SIDE, dtype=torch.uint8),)
    (images,) = chunked_local(SAMPLES_LARGE, ctx.sample.batch_size,
                              functools.partial(dm.synthetic_chunk, side=SIDE), empty)
    one = score_samples(images, ctx, full=True)
    two = next(r["result"] for r in rows
               if r["kind"] == "score" and r["n"] == SAMPLES_LARGE and r["rank"] == 0)
    assert set(one) == set(two) and len(one) >= 7
    for k in one:
        print(f"{k}: one process {one[k]!r}, two ranks {two[k]!r}")
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-9), k
    with np.load(base / "runs" / f"samples-{SAMPLES_LARGE}.npz") as z:
        assert np.array_equal(z["images"], images.numpy())
        assert np.array_equal(z["labels"], class_labels(SAMPLES_LARGE, ctx.num_classes).numpy())


def _three_ranks(rank: int, port: int) -> None:
    """3 ranks, 2 chunks of 7 rows: rank 2 has none; every hand-over still lines up."""
    import torch.distributed as dist

    from pixbench import distributed
    from pixbench.tasks.gen.parallel import chunked, chunked_local, features_to_main

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=3)
    try:
        rows = torch.arange(7.0)[:, None].repeat(1, 3)  # (7, 3): row i is i

        def fn(b: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            return rows[start:stop], torch.tensor([stop - start])  # per item; per chunk

        empty = (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
        on_main, counts = chunked(7, 4, fn, empty, main_only=True)
        everywhere, _ = chunked(7, 4, fn, empty)
        local, _ = chunked_local(7, 4, fn, empty)
        feats = features_to_main({"f": local} if len(local) else None)
        got: list = []
        distributed.to_main([local, local[:0]], lambda i, t: got.append((i, len(t))))
        assert torch.equal(everywhere, rows) and len(local) == (4, 3, 0)[rank]
        if rank == 0:
            assert torch.equal(on_main, rows) and counts.tolist() == [4, 3]
            assert torch.equal(feats["f"], rows)
            assert got == [(0, 4), (1, 0), (0, 3), (1, 0), (0, 0), (1, 0)]
        else:
            assert feats is None and got == [] and torch.equal(on_main, local)
    finally:
        dist.destroy_process_group()


def test_ranks_without_chunks_hand_over_in_order() -> None:
    """More ranks than chunks: rank 0 still gets every rank's rows in chunk order."""
    import torch.multiprocessing as mp

    mp.spawn(_three_ranks, args=(dm._free_port(),), nprocs=3, join=True)
