"""`python -m gpucheck [--cpu]`: run every step, write the summary, exit 1 on any
failure. The parent never touches CUDA: it imports torch and pixbench once (so forked steps
start in milliseconds), schedules the steps and writes the report."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from gpucheck.data import REPO_PARAMS

MARKER = ".gpucheck-work"  # a work dir the check made, and may wipe


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m gpucheck", description=(
        "GPU validation kit: every task tiny on CUDA, bf16 vs fp32, flash attention, NCCL DDP "
        "and the gpu-check benchmark suite, each step in its own process with its own limit."))
    ap.add_argument("--cpu", action="store_true", help="the CPU form: device cpu, gloo, the "
                    "quick bench suite, tight sizes (what CI runs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="summary + benchmark files (default reports/bench; with --cpu "
                    "runs/gpu-check-report, outside the committed reports)")
    ap.add_argument("--work", type=Path, default=Path("runs/gpu-check"),
                    help="caches, runs, step logs; wiped at the start (default runs/gpu-check)")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds for the whole check, from its start (default 450)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="steps at a time (default 4 on a GPU, 1 with --cpu)")
    ap.add_argument("--only", default="", help="comma-separated steps (and what they need)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out")
    ap.add_argument("--bench-suite", default=None,
                    help="bench profile (default gpu-check; quick with --cpu; gpu = the full one)")
    ap.add_argument("--bench-select", default="", help="comma-separated case-id substrings: "
                    "run only those cases (files then named -partial)")
    ap.add_argument("--start", choices=("fork", "spawn"), default="fork",
                    help="how step processes start (fork: after one import of torch)")
    ap.add_argument("--sizes", choices=("cpu", "gpu"), default="",
                    help="the data and model sizes of that form (default: the device's); "
                    "`--cpu --sizes gpu` rehearses the GPU form's shapes on the CPU, slowly")
    ap.add_argument("--recipes", type=Path, default=REPO_PARAMS,
                    help="params.yaml whose recipes the tasks use (default the repo's)")
    return ap.parse_args(argv)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def fresh_work_dir(work: Path) -> Path:
    """The work dir, empty; refuses to wipe a folder the check did not make."""
    work = work.resolve()
    if work.exists():
        if not (work / MARKER).exists() and any(work.iterdir()):
            raise SystemExit(f"gpu-check: {work} exists and was not made by the check; "
                             "pass another --work")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by python -m gpucheck; wiped on each run\n")
    return work


# What the steps import, heaviest first (seconds each on two cores: diffusers' VQModel 5,
# dvclive + dvc.repo 1.2, timm 0.4); a module that fails here fails in its step, with its error.
PRELOAD = ("torch", "diffusers.models.autoencoders.vq_model", "diffusers.schedulers",
           "dvclive", "dvc.repo", "timm", "torch_fidelity", "submitit", "pixbench.launch",
           "benchsuite.run", "benchsuite.workloads", "gpucheck.steps",
           "pixbench.tasks.classify.run",
           "pixbench.tasks.mae.run", "pixbench.tasks.gen.dit_eval", "pixbench.tasks.gen.vq",
           "pixbench.tasks.gen.featnet", "pixbench.models.vqgan", "torch.distributed")


def preload(start: str) -> str:
    """Import what the steps import, once, without initialising CUDA (fork-safe)."""
    if start != "fork":
        return start
    import importlib

    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() via NVML
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the step that needs it reports the error
            pass
    import torch

    if torch.cuda.is_initialized():  # something initialised CUDA: forked children could not
        print("gpu-check: CUDA was initialised while importing; steps start by spawn",
              file=sys.stderr)
        return "spawn"
    return "fork"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    args.argv = argv
    t0 = time.monotonic()
    from gpucheck import steps

    try:
        todo = steps.select(steps.all_steps(args.cpu), _names(args.only), _names(args.skip))
        if args.budget <= 0 or (args.jobs is not None and args.jobs < 1):
            raise ValueError("--budget must be > 0 and --jobs >= 1")
    except ValueError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    out = (args.out or Path("runs/gpu-check-report" if args.cpu else "reports/bench")).resolve()
    work = fresh_work_dir(args.work)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(PIXBENCH_CACHE_DIR=str(work / "data"),
                      PIXBENCH_RUNS_DIR=str(work / "runs"),
                      PIXBENCH_REPORTS_DIR=str(work / "reports"),
                      PIXBENCH_LOGS_DIR=str(work / "launcher-logs"))
    start = preload(args.start)
    from gpucheck.context import Ctx
    from gpucheck.harness import Harness

    ctx = Ctx(cpu=args.cpu, work=str(work), out=str(out), params=str(work / "params.yaml"),
              bench_suite=args.bench_suite or ("quick" if args.cpu else "gpu-check"),
              bench_select=tuple(_names(args.bench_select)), recipes=str(args.recipes.resolve()),
              sizes=args.sizes)
    jobs = args.jobs or (1 if args.cpu else 4)
    left = args.budget - (time.monotonic() - t0)  # the imports above count too
    harness = Harness(todo, ctx, work, jobs=jobs, budget_s=left, start_method=start,
                      log=lambda m: print(f"gpu-check [{time.monotonic() - t0:6.1f} s] {m}",
                                          file=sys.stderr, flush=True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the steps are killed too
    results = harness.run()
    return report(results, args, ctx, start, jobs, time.monotonic() - t0)


def report(results: list[dict], args, ctx, start: str, jobs: int, elapsed: float) -> int:
    from gpucheck import summary, wheels

    modules = {m for r in results for m in r.pop("modules", [])}
    meta = {"where": summary.where_name(results, args.cpu), "form": "cpu" if args.cpu else "gpu",
            "sizes": args.sizes or ("cpu" if args.cpu else "gpu"),
            "device": ctx.device, "budget_s": args.budget, "duration_s": round(elapsed, 1),
            "jobs": jobs, "start_method": start, "bench_suite": ctx.bench_suite,
            "command": "python -m gpucheck " + shlex.join(args.argv),
            "imports_missing_on_target": wheels.missing_on_target(modules),
            "carry_version_drift": wheels.version_drift()}
    doc = summary.build(results, meta)
    js, md = summary.write(doc, Path(ctx.out))
    width = max(len(r["name"]) for r in results)
    for r in results:
        print(f"{r['name']:<{width}}  {r['status'].upper():<7} {r.get('seconds', 0):6.1f} s  "
              f"{r.get('detail', '')}")
    print(f"{'PASS' if doc['ok'] else 'FAIL'}: {len(doc['passed'])} passed, "
          f"{len(doc['skipped'])} skipped, {len(doc['failed'])} failed in {elapsed:.0f} s; "
          f"wrote {js} and {md}")
    return doc["exit_code"]
