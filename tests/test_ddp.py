"""Data parallel on CPU: 2 gloo processes train one run the way one process would, and only
rank 0 writes. Tolerance: the same global batches, augmentation and masking draws reach both
runs; only the gradient all-reduce order differs, so weights agree to 5e-4 (a different seed
moves them by ~1e-2) and the step counts exactly."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_PARAMS, make_tiny_cache, write_params

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


def _worker(rank: int, world: int, port: int, tasks: tuple[str, ...], params_path: str,
            env: dict) -> None:
    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        if rank > 0:
            forbid_writes_off_rank0()
        # each rank's shard comes from a loader worker process; the one process makes its
        # batches itself: neither the rank count nor the worker count changes a batch
        for task in tasks:
            run_task(task, make_spec(task, params_path), loader_workers=1)
    finally:
        dist.destroy_process_group()


TASKS = ("classify", "mae-pretrain")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Both tasks trained by ONE spawn of 2 gloo ranks (each rank runs classify, then
    mae-pretrain: starting the ranks is most of the cost, so the two tests share them).
    Returns (params path, the ranks' project dir): data/ (read-only) and runs-ddp/."""
    root = tmp_path_factory.mktemp("ddp")
    make_tiny_cache(root / "data" / "tiny")  # what conftest's tiny_project makes
    params_path = write_params(root / "params.yaml", copy.deepcopy(TINY_PARAMS))
    _without_drop_path(params_path)
    env = {"PIXBENCH_CACHE_DIR": str(root / "data"), "PIXBENCH_RUNS_DIR": str(root / "runs-ddp"),
           "PIXBENCH_REPORTS_DIR": str(root / "reports")}
    with pytest.MonkeyPatch.context() as m:  # the ranks start where conftest's workdir puts a test
        m.delenv("PIXBENCH_DATA_ROOT", raising=False)
        m.chdir(root)
        mp.spawn(_worker, args=(2, free_port(), TASKS, str(params_path), env), nprocs=2,
                 join=True)
    return params_path, root


@pytest.mark.parametrize("task", TASKS)
def test_two_gloo_ranks_match_one_process(task, ddp_runs, workdir, monkeypatch):
    params_path, shared = ddp_runs
    monkeypatch.setenv("PIXBENCH_CACHE_DIR", str(shared / "data"))  # the cache the ranks read
    spec = make_spec(task, params_path)
    single = run_task(task, spec)  # into this test's own runs/
    ddp_dir = shared / "runs-ddp" / "tiny" / spec.run_id
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
