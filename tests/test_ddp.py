"""Data parallel on CPU: 2 gloo processes train one run the way one process would, and only
rank 0 writes. Tolerance: the same global batches, augmentation and masking draws reach both
runs; only the gradient all-reduce order differs, so weights agree to 5e-4 (a different seed
moves them by ~1e-2) and the step counts exactly."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixbench.config import Paths, load_params, make_classify_spec, make_pretrain_spec
from pixbench.runio import CKPT_NAME


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forbid_writes_off_rank0() -> None:
    """Every file pixbench writes goes through runio.atomic_write_bytes: on ranks > 0 make it
    fail, so a stray write fails the test instead of racing rank 0."""
    import pixbench.runio as runio

    def refuse(path, data):
        raise AssertionError(f"rank {dist.get_rank()} wrote {path}")

    runio.atomic_write_bytes = refuse


def _without_drop_path(params_path) -> None:
    """Stochastic depth draws masks per shard (rank-aware seeds), so a 2-rank run is only
    sample-equivalent to one process with it; the weight comparison needs equivalence."""
    import yaml

    params = yaml.safe_load(params_path.read_text())
    params["profiles"]["tiny"]["classify"]["drop_path"] = 0.0
    params_path.write_text(yaml.safe_dump(params))


def make_spec(task: str, params_path):
    params = load_params(params_path)
    if task == "classify":
        return make_classify_spec(params, size=None, patch=4, seed=0)
    return make_pretrain_spec(params, size=None, patch=4, seed=0)


def run_task(task: str, spec, loader_workers: int | None = None) -> dict:
    from pixbench.tasks.classify import run as classify
    from pixbench.tasks.mae import run as mae

    return (classify if task == "classify" else mae).run(spec, Paths(), progress=False,
                                                         loader_workers=loader_workers)


def _worker(rank: int, world: int, port: int, task: str, params_path: str, env: dict) -> None:
    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        if rank > 0:
            forbid_writes_off_rank0()
        # each rank's shard comes from a loader worker process; the one process makes its
        # batches itself: neither the rank count nor the worker count changes a batch
        run_task(task, make_spec(task, params_path), loader_workers=1)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("task", ["classify", "mae-pretrain"])
def test_two_gloo_ranks_match_one_process(task, tiny_project, tmp_path):
    _without_drop_path(tiny_project)
    env = {k: v for k, v in os.environ.items() if k.startswith("PIXBENCH_")}
    env["PIXBENCH_RUNS_DIR"] = str(tmp_path / "runs-ddp")
    mp.spawn(_worker, args=(2, free_port(), task, str(tiny_project), env), nprocs=2, join=True)

    spec = make_spec(task, tiny_project)
    single = run_task(task, spec)
    ddp_dir = tmp_path / "runs-ddp" / "tiny" / spec.run_id
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    manifest = json.loads((ddp_dir / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert not list(ddp_dir.rglob("*.tmp"))
    w_ddp = torch.load(ddp_dir / CKPT_NAME, weights_only=True)["modules"]["model"]
    w_one = torch.load(Paths().run_dir("tiny", spec.run_id) / CKPT_NAME,
                       weights_only=True)["modules"]["model"]
    diff = max((w_ddp[k] - w_one[k]).abs().max().item() for k in w_one)
    assert diff < 5e-4, diff
    assert ddp["steps"] == single["steps"]
    key = "top1" if task == "classify" else "recon_loss"
    assert ddp[key] == pytest.approx(single[key], rel=0.05, abs=2.0)
