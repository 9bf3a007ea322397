"""What a sweep will cost, before anything trains (issue 25: a pixel cell of 10-12 minutes
started with no estimate, against seconds for the patch cells): per cell, analytic FLOPs over
a FLOP rate measured on this machine.
- steps: the recipe over the prepared dataset (cache labels: the class-balanced subsets;
  min_steps), as the task computes them (engine.train_epochs);
- FLOPs: models/flops.py and models/dit.py (the metrics' gflops_train, gflops_per_step) of
  every optimiser step, and at forward cost the evaluations the task runs (curve rows, the
  final evaluation, the throughput probe);
- rates: real fwd+bwd+AdamW steps of each distinct model config (size, patch, image size,
  channels, precision) on random inputs: a step at FIRST_BATCH (lazy init), two to size the
  batch, then WARMUP + TIMED steps at the recipe's batch, or at the smaller one whose step
  takes ~STEP_S, extrapolated to the recipe's (at_batch; a GPU is timed at the recipe's
  batch, cheap there); short steps are timed in greater number (a noisy clock); then as many
  forward passes without autograd (evaluations, a linear probe's frozen encoder). A config
  costs ~(WARMUP + 2 * TIMED) * STEP_S and a model build (one too slow for that: 6 steps and
  3 forward passes at FIRST_BATCH); none starts after BUDGET_S; the total is reported;
- a finished cell (metrics.json beside a spec.json of the same digest) costs 0, shown done;
- the convolutional tokenizer and FID classifier, the evaluations, and a cell whose cache is
  not prepared say "no estimate".
Not counted: a cell's fixed costs (imports, data loading, checkpoints: ~1-3 s on a CPU) and a
partly trained cell's finished steps. The rate is this machine's at the given threads: a
SLURM node, or several cells side by side (study jobs), run at another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pixbench.config import Paths
from pixbench.data.cache import load_cache
from pixbench.data.subsets import balanced_subset
from pixbench.errors import UserError
from pixbench.eval.measure import autocast
from pixbench.models.flops import vit_forward_flops, vit_train_flops
from pixbench.models.vit import display_name, vit, vit_shape
from pixbench.runio import read_json
from pixbench.tasks.classify.engine import CURVE_VAL_IMAGES, train_epochs, use_bf16
from pixbench.tasks.livelog import duration
from pixbench.tasks.rundir import METRICS
from pixbench.tasks.runner import pick_device

STEP_S = 0.25  # target seconds of one calibration step (the batch shrinks to it, never grows)
FIRST_BATCH = 4
WARMUP, TIMED, MAX_TIMED = 2, 3, 50
BUDGET_S = 120.0  # no model config starts its timing after this much calibration
CLASSIFY_TASKS = ("classify", "mae-finetune", "mae-linprobe", "mae-scratch")


@dataclasses.dataclass(frozen=True)
class Probe:
    """A model config to time: `inputs(b, device)` a random batch, `loss(model, *batch)` the
    loss whose fwd+bwd is timed; `flops`: train FLOPs per image (3x forward, as every formula)."""

    label: str
    flops: float
    batch: int
    bf16: bool
    make: Callable
    inputs: Callable
    loss: Callable


@dataclasses.dataclass(frozen=True)
class Rate:
    label: str
    gflops_per_s: float  # training steps (fwd+bwd+AdamW) at the recipe's batch
    forward_gflops_per_s: float  # forward passes without autograd (evaluations)
    batch: int  # the timed batch
    of_batch: int  # the recipe's, which the rate is for


@dataclasses.dataclass(frozen=True)
class CellCost:
    run_id: str
    tokens: int | None
    steps: int | None
    gflops: float | None  # all of the cell's FLOPs (steps and evaluations)
    seconds: float | None  # None: no estimate (see `status`)
    status: str  # "pending", "done", or "no estimate (why)"


@dataclasses.dataclass(frozen=True)
class Estimate:
    cells: list[CellCost]
    rates: list[Rate]
    calibration_s: float
    device: str
    threads: int

    @property
    def total_s(self) -> float:
        return sum(c.seconds or 0.0 for c in self.cells)


@dataclasses.dataclass(frozen=True)
class Work:
    """A pending cell's plan: which probe's rates it runs at, and its FLOPs: `train` at the
    training rate, `forward` (evaluations, a frozen encoder) at the forward rate."""

    key: tuple
    tokens: int
    steps: int
    train: float
    forward: float = 0.0


class Context:
    """What the planners share: params, paths, the device, and each cache read once."""

    def __init__(self, params, paths: Paths, device: torch.device) -> None:
        self.params, self.paths, self.device = params, paths, device
        self._caches: dict[Path, object] = {}
        self._counts: dict[tuple, int] = {}

    def count(self, ds, split: str, subset: int | None) -> int:
        """Images of a split that a task uses: its fixed class-balanced subset (data/subsets.py;
        once per cache, split and size: it permutes every label)."""
        key = (id(ds), split, subset)
        if key not in self._counts:
            labels = np.asarray(getattr(ds, f"{split}_labels"))
            self._counts[key] = len(balanced_subset(labels, subset, len(ds.classes)))
        return self._counts[key]

    def cache(self, path: Path, data) -> object:
        """The cache at `path` (memory-mapped, not hashed), or why there is no estimate."""
        if path not in self._caches:
            try:
                self._caches[path] = load_cache(path, verify=False)
            except UserError:
                self._caches[path] = f"no estimate (no dataset cache at {path})"
        ds = self._caches[path]
        if not isinstance(ds, str) and ds.manifest.get("spec") != data.model_dump():
            return f"no estimate ({path} was prepared for another data spec)"
        return ds


def _vit_probe(spec, m: dict, bf16: bool) -> Probe:
    """The classifier of a cell (tasks/classify/run.build_model's, without the permutation and
    the position-embedding choice: neither changes a step's cost)."""
    cfg, size = spec.classify, m["image_size"]
    shape = vit_shape(size=spec.size, patch=spec.patch, image_size=size, in_chans=m["channels"],
                      num_classes=m["num_classes"], pool=cfg.pool)

    def make():
        return vit(size=spec.size, patch=spec.patch, image_size=size, in_chans=m["channels"],
                   num_classes=m["num_classes"], pool=cfg.pool)

    def inputs(b, device):
        return (torch.randn(b, m["channels"], size, size, device=device),
                torch.randint(0, m["num_classes"], (b,), device=device))

    return Probe(f"{display_name(spec.size, spec.patch)} {size}px", vit_train_flops(shape),
                 cfg.batch_size, bf16, make, inputs,
                 lambda model, x, y: F.cross_entropy(model(x), y))


def plan_classify(spec, ctx: Context):
    """Classification, its locality variants and the MAE fine-tune / probe / scratch cells:
    the schedule of tasks/classify/engine.py, the evaluations of tasks/classify/run.py."""
    ds = ctx.cache(ctx.paths.cache_for(spec.profile), spec.data)
    if isinstance(ds, str):
        return ds
    cfg, m = spec.classify, ds.manifest
    n, n_val = ctx.count(ds, "train", cfg.train_subset), ctx.count(ds, "val", cfg.val_subset)
    per_epoch = n // cfg.batch_size
    if per_epoch < 1 or spec.patch < 1 or m["image_size"] % spec.patch:
        return (f"no estimate (batch {cfg.batch_size}, {n} images, patch {spec.patch}: "
                "it cannot run)")
    epochs = train_epochs(cfg, per_epoch)
    steps = per_epoch * epochs
    shape = vit_shape(size=spec.size, patch=spec.patch, image_size=m["image_size"],
                      in_chans=m["channels"], num_classes=m["num_classes"], pool=cfg.pool)
    fwd, train = vit_forward_flops(shape), vit_train_flops(shape)
    ce = cfg.curve_every_steps or 0  # curve rows: every epoch end and every ce steps
    rows = epochs + (steps // ce - steps // math.lcm(ce, per_epoch) if ce else 0)
    b, t = min(cfg.batch_size, n), cfg.throughput_steps  # run.metrics's probe (+2, +1 warm-up)
    evals = rows * min(CURVE_VAL_IMAGES, n_val) + n_val + (t + 1) * b
    images = steps * cfg.batch_size
    if spec.task == "mae-linprobe":  # a frozen encoder: forward passes, no backward
        evals, images = evals + images, 0
    bf16 = use_bf16(cfg.precision, spec.size, ctx.device)
    key = ("vit", spec.size, spec.patch, m["image_size"], m["channels"], m["num_classes"],
           cfg.pool, bf16, cfg.batch_size)
    work = Work(key, shape.patch_tokens, steps, (images + (t + 2) * b) * train, evals * fwd)
    return work, _vit_probe(spec, m, bf16)


def plan_pretrain(spec, ctx: Context):
    """MAE pre-training: tasks/mae/engine.py's schedule, a 1000-image val row per epoch."""
    from pixbench.tasks.mae.run import VAL_IMAGES, build_mae, spec_flops

    ds = ctx.cache(ctx.paths.cache_for(spec.profile), spec.data)
    if isinstance(ds, str):
        return ds
    cfg, m = spec.pretrain, ds.manifest
    n = ctx.count(ds, "train", cfg.train_subset)
    per_epoch = n // cfg.batch_size
    if per_epoch < 1:
        return f"no estimate (batch {cfg.batch_size} > {n} images: it cannot run)"
    steps, fwd = per_epoch * cfg.epochs, spec_flops(spec, m["image_size"], m["channels"])
    b = min(cfg.batch_size, n)
    evals = cfg.epochs * min(VAL_IMAGES, len(ds.val_labels)) + (cfg.throughput_steps + 1) * b
    bf16 = use_bf16(cfg.precision, spec.size, ctx.device)
    size, c = m["image_size"], m["channels"]
    probe = Probe(f"MAE {display_name(spec.size, spec.patch)} {size}px", 3 * fwd,
                  cfg.batch_size, bf16, lambda: build_mae(spec, m),
                  lambda b, device: (torch.randn(b, c, size, size, device=device),),
                  lambda model, x: model(x, mask_ratio=cfg.mask_ratio)[0])
    key = ("mae", spec.size, spec.patch, size, c, cfg.mask_ratio, bf16, cfg.batch_size)
    return Work(key, (size // spec.patch) ** 2, steps, steps * cfg.batch_size * 3 * fwd,
                evals * fwd), probe


def plan_dit(spec, ctx: Context):
    """DiT training: its optimiser steps only (the FID probes along the curve decode with
    the tokenizer and classify with FeatNet, which have no FLOPs formula)."""
    from pixbench.config.gen import latent_side
    from pixbench.models.dit import dit_display_name, dit_gflops_per_step
    from pixbench.tasks.gen.dit import use_bf16 as dit_bf16
    from pixbench.tasks.gen.sampling import build_dit_model

    gen = ctx.params.profiles[spec.profile].gen
    ds = ctx.cache(ctx.paths.gen_cache_for(spec.profile), gen.data)
    if isinstance(ds, str):
        return ds
    cfg, side, c, classes = spec.dit, latent_side(gen), gen.vq.latent_channels, len(ds.classes)
    fwd = dit_gflops_per_step(spec.size, spec.patch, side, c) * 1e9
    bf16 = dit_bf16(cfg.precision, spec.size, ctx.device)

    def inputs(b, device):
        return (torch.randn(b, c, side, side, device=device),
                torch.randint(0, cfg.num_train_timesteps, (b,), device=device),
                torch.randint(0, classes, (b,), device=device))

    probe = Probe(f"{dit_display_name(spec.size, spec.patch)} {side}px latents", 3 * fwd,
                  cfg.batch_size, bf16, lambda: build_dit_model(spec, [c, side, side], classes),
                  inputs, lambda model, x, t, y: F.mse_loss(model(x, t, y).float(), x))
    key = ("dit", spec.size, spec.patch, side, c, classes, bf16, cfg.batch_size)
    work = Work(key, (side // spec.patch) ** 2, cfg.steps, cfg.steps * cfg.batch_size * 3 * fwd)
    return work, probe


PLANNERS = {**dict.fromkeys(CLASSIFY_TASKS, plan_classify), "mae-pretrain": plan_pretrain,
            "dit": plan_dit}
EVALUATION = "no estimate (an evaluation: sampling and FID have no FLOPs formula)"
NO_FORMULA = {"vq": "no estimate (convolutional tokenizer: no FLOPs formula)",
              "featnet": "no estimate (convolutional FID classifier: no FLOPs formula)",
              "vq-eval": EVALUATION, "dit-eval": EVALUATION}


def finished(spec, paths: Paths) -> bool:
    """metrics.json beside a spec.json of this spec's digest (what a run would reuse)."""
    run_dir = paths.run_dir(spec.profile, spec.run_id)
    if not (run_dir / METRICS).is_file():
        return False
    try:
        return read_json(run_dir / "spec.json", "run spec").get("digest") == spec.digest()
    except (UserError, AttributeError):
        return False


def time_probe(probe: Probe, device: torch.device) -> Rate:
    """GFLOP/s of `probe`'s fwd+bwd+AdamW step and of its forward pass alone (module
    docstring: how the batch is chosen)."""
    model = probe.make().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def seconds_per_step(b: int, steps: int, train: bool = True) -> float:
        batch = probe.inputs(b, device)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            with autocast(device, probe.bf16), torch.set_grad_enabled(train):
                loss = probe.loss(model, *batch)
            if train:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        sync()
        return (time.perf_counter() - start) / steps

    b0 = min(FIRST_BATCH, probe.batch)
    seconds_per_step(b0, 1)  # lazy initialisation, first allocations
    small = seconds_per_step(b0, 2)
    b = max(b0, min(probe.batch, int(STEP_S * b0 / max(small, 1e-9))))
    slow = small > 2 * STEP_S  # a big model even at b0: the fewest steps that still time it
    seconds_per_step(b, 1 if slow else WARMUP)
    # steps of a few ms are noisy: time about TIMED * STEP_S of them (at most MAX_TIMED)
    n = 2 if slow else max(TIMED, min(MAX_TIMED, int(TIMED * STEP_S * b0 / max(small * b, 1e-9))))
    step_s = at_batch(seconds_per_step(b, n), b, small, b0, probe.batch)
    model.eval()
    seconds_per_step(b, 1, train=False)
    forward_s = seconds_per_step(b, n, train=False)
    return Rate(probe.label, probe.flops * probe.batch / step_s / 1e9,
                probe.flops / 3 * b / forward_s / 1e9, b, probe.batch)


def at_batch(t: float, b: int, t0: float, b0: int, batch: int) -> float:
    """A step's seconds at `batch`, from t seconds at b and t0 at b0 < b: the fixed part of a
    step (AdamW, launches) does not grow with the batch, only the rest (t - t0) / (b - b0) per
    image does; scaling t alone by batch / b would count the fixed part batch / b times."""
    if b >= batch:
        return t
    per_image = (t - t0) / (b - b0) if b > b0 and t > t0 else t / b
    return t + (batch - b) * per_image


@contextlib.contextmanager
def _calibrating(threads: int | None, device: torch.device):
    """The calibration leaves no trace: the global RNGs (model inits and inputs draw from
    them) and the thread count are restored."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    gpus = [torch.cuda.current_device()] if device.type == "cuda" else []  # pick_device set it
    try:
        with torch.random.fork_rng(devices=gpus):
            yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def estimate(params, runs, paths: Paths | None = None, *, device: str = "auto",
             threads: int | None = None, budget_s: float = BUDGET_S) -> Estimate:
    """Per-cell and total estimated seconds of `runs` (config.pipeline.sweep_runs(params), or
    their specs), calibrating each distinct model config of the pending cells on `device` with
    `threads` intra-op threads (None: as set); no config starts its timing after `budget_s`
    seconds of calibration (its cells say so)."""
    paths, dev = paths or Paths(), pick_device(device)
    ctx, plans, probes = Context(params, paths, dev), [], {}
    for spec in (getattr(run, "spec", run) for run in runs):
        if finished(spec, paths):
            plans.append((spec, "done"))
        elif spec.task in PLANNERS:
            plan = PLANNERS[spec.task](spec, ctx)
            if not isinstance(plan, str):
                probes.setdefault(plan[0].key, plan[1])
                plan = plan[0]
            plans.append((spec, plan))
        else:
            plans.append((spec, NO_FORMULA.get(spec.task, f"no estimate ({spec.task})")))
    t0, rates = time.perf_counter(), {}
    with _calibrating(threads, dev) as used:
        for key, probe in probes.items():
            if time.perf_counter() - t0 < budget_s:
                rates[key] = time_probe(probe, dev)
    calibration_s = time.perf_counter() - t0
    return Estimate([_cost(spec, plan, rates) for spec, plan in plans], list(rates.values()),
                    calibration_s, str(dev), used)


def _cost(spec, plan, rates: dict) -> CellCost:
    if isinstance(plan, str):
        return CellCost(spec.run_id, None, None, None, 0.0 if plan == "done" else None, plan)
    gflops, rate = (plan.train + plan.forward) / 1e9, rates.get(plan.key)
    if rate is None:
        return CellCost(spec.run_id, plan.tokens, plan.steps, gflops, None,
                        "no estimate (calibration budget spent before its model)")
    seconds = plan.train / 1e9 / rate.gflops_per_s + plan.forward / 1e9 / rate.forward_gflops_per_s
    return CellCost(spec.run_id, plan.tokens, plan.steps, gflops, seconds, "pending")


def estimate_lines(params, runs=None, paths: Paths | None = None, *, jobs: int = 1,
                   **kwargs) -> list[str]:
    """A plain table (cell, tokens, steps, GFLOPs, est. time), the total, the measured rates:
    of an Estimate, or of estimate(params, runs, paths, **kwargs). `jobs`: cells at a time."""
    est = params if isinstance(params, Estimate) else estimate(params, runs, paths, **kwargs)
    width = max([len("cell"), *(len(c.run_id) for c in est.cells)])
    out = [f"{'cell':<{width}}  {'tokens':>6}  {'steps':>7}  {'GFLOPs':>10}  est. time"]
    for c in est.cells:
        when = (c.status if c.seconds is None else "done" if c.status == "done"
                else duration(c.seconds))
        nums = [f"{c.tokens:>6}" if c.tokens is not None else f"{'-':>6}",
                f"{c.steps:>7}" if c.steps is not None else f"{'-':>7}",
                f"{c.gflops:>10,.0f}" if c.gflops is not None else f"{'-':>10}"]
        out.append(f"{c.run_id:<{width}}  {'  '.join(nums)}  {when}")
    done = sum(c.status == "done" for c in est.cells)
    # side by side: no sooner than the longest cell (rates as calibrated, at `threads` each)
    wall = max([est.total_s / jobs, *(c.seconds or 0.0 for c in est.cells)])
    unknown = sum(c.seconds is None for c in est.cells)
    out.append(f"total: {duration(est.total_s)} for {len(est.cells) - done - unknown} pending "
               f"cells ({done} done, {unknown} without an estimate), one at a time"
               + (f"; {jobs} at a time about {duration(wall)}" if jobs > 1 else ""))
    out.append(f"measured on {est.device} with {est.threads} threads, calibration "
               f"{est.calibration_s:.1f}s:" + ("" if est.rates else " nothing to time"))
    out += [f"  {r.label}: {r.gflops_per_s:,.1f} GFLOP/s training at batch {r.of_batch}"
            + (f" (timed at {r.batch})" if r.batch < r.of_batch else "")
            + f", {r.forward_gflops_per_s:,.1f} forward" for r in est.rates]
    return out
