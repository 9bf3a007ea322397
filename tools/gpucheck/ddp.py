"""Data parallel through torch.multiprocessing spawn: NCCL on GPUs (gloo in the CPU form), one
rank per GPU, at world size 1 and, with two GPUs or more, 2.

Each rank: initialises the process group, takes its local GPU (LOCAL_RANK, as under SLURM),
checks an all_reduce and a gather (pixbench.distributed.gather_rows), checks that a
DistributedDataParallel backward all-reduces the gradients to those of the global batch on one
process (DDP wraps the model even at world size 1 here, so NCCL moves gradients at every world
size), then runs the classify task (ViT p=4) under the process group, as a SLURM job's ranks
would. Rank 0 writes a result file; the step reads them all.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from gpucheck.context import Ctx
from gpucheck.harness import CheckFailed, StepSkipped

GRAD_ATOL = 1e-5  # DDP-averaged vs one-process gradients (fp32; only the reduce order differs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, world: int, device) -> dict:
    import torch
    import torch.distributed as dist

    from pixbench import distributed

    t = torch.full((3,), float(rank + 1), device=device)
    dist.all_reduce(t)
    want = world * (world + 1) / 2
    rows = distributed.gather_rows(torch.full((rank + 1, 2), float(rank), device=device))
    ok = bool((t == want).all()) and rows.shape[0] == want
    return {"all_reduce_ok": ok, "gathered_rows": int(rows.shape[0])}


def _ddp_grads(rank: int, world: int, device) -> float:
    """Max |DDP grad - one-process grad| for a small MLP on a global batch of 8."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(),
                                torch.nn.Linear(32, 4)).to(device)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).to(device)  # (B, 16)
    ref = [g.detach().clone() for g in torch.autograd.grad(model(x).square().mean(),
                                                           model.parameters())]
    ids = [device.index] if device.type == "cuda" else None
    ddp = DDP(model, device_ids=ids)
    shard = x[rank * (8 // world):(rank + 1) * (8 // world)]
    ddp(shard).square().mean().backward()
    return max(float((p.grad - r).abs().max()) for p, r in zip(model.parameters(), ref))


def worker(rank: int, world: int, port: int, ctx: Ctx, env: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(env, LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1 if ctx.cpu else 2)
    dist.init_process_group(ctx.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        from pixbench.config import Paths, load_params, make_classify_spec
        from pixbench.tasks.classify import run as classify
        from pixbench.tasks.runner import pick_device

        device = pick_device("cuda" if not ctx.cpu else "cpu")  # world 2: cuda:LOCAL_RANK
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        res = {"rank": rank, "device": str(device), **_collectives(rank, world, device),
               "grad_max_err": _ddp_grads(rank, world, device)}
        spec = make_classify_spec(load_params(ctx.params), size=ctx.form.vit, patch=4, seed=0)
        m = classify.run(spec, Paths(), device="cuda" if not ctx.cpu else "cpu",
                         progress=False)
        if rank == 0:
            man = json.loads((Paths().run_dir(spec.profile, spec.run_id)
                              / "manifest.json").read_text())
            res.update(steps=m["steps"], top1=m["top1"], precision=m["precision"],
                       manifest_world=man["world_size"], manifest_device=man["device"])
        Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    finally:
        dist.destroy_process_group()


def run_ddp(ctx: Ctx, world: int) -> dict:
    import torch
    import torch.multiprocessing as mp

    if not ctx.cpu and torch.cuda.device_count() < world:
        raise StepSkipped(f"world size {world} needs {world} GPUs; this machine has "
                          f"{torch.cuda.device_count()}")
    base = Path(ctx.work) / f"ddp{world}"
    base.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith("PIXBENCH_")}
    env["PIXBENCH_RUNS_DIR"] = str(base / "runs")  # not the single-process classify runs
    mp.start_processes(worker, args=(world, _free_port(), ctx, env, str(base)), nprocs=world,
                       join=True, start_method="spawn")
    ranks = [json.loads((base / f"rank{r}.json").read_text()) for r in range(world)]
    return _judge(ctx, world, ranks)


def _judge(ctx: Ctx, world: int, ranks: list[dict]) -> dict:
    r0 = ranks[0]
    bad = [f"rank {r['rank']}: collectives" for r in ranks if not r["all_reduce_ok"]]
    bad += [f"rank {r['rank']}: grad err {r['grad_max_err']:.1e}" for r in ranks
            if r["grad_max_err"] > GRAD_ATOL]
    if r0["manifest_world"] != world:
        bad.append(f"manifest world_size {r0['manifest_world']} != {world}")
    if not r0["manifest_device"].startswith(ctx.device):
        bad.append(f"classify ran on {r0['manifest_device']}")
    devices = sorted({r["device"] for r in ranks})
    if not ctx.cpu and len(devices) != world:
        bad.append(f"ranks share devices {devices}")
    if bad:
        raise CheckFailed("; ".join(bad))
    return {"detail": f"{ctx.backend} world {world} on {', '.join(devices)}: all_reduce + "
            f"gather ok, DDP grads within {max(r['grad_max_err'] for r in ranks):.1e}, "
            f"classify {r0['steps']} steps ({r0['precision']}, top-1 {r0['top1']:.1f}%)",
            "figures": {"ranks": ranks}}


def ddp_1(ctx: Ctx) -> dict:
    return run_ddp(ctx, 1)


def ddp_2(ctx: Ctx) -> dict:
    return run_ddp(ctx, 2)
