"""Every task of the project, tiny, end to end, on the check's device: through launch.launch and
the task table (pixbench.tasks.table.TASKS), as `pixbench ... --device cuda` runs them, on the
check's params (the recipes with small sizes) and its generated caches. Each step checks what
its metrics say: finite numbers, the device it ran on, the precision the recipe asks for
(`auto`: bf16 autocast on CUDA), GPU memory figures from the CUDA allocator.
"""

from __future__ import annotations

import math

from gpucheck.context import Ctx
from gpucheck.harness import CheckFailed

CLASSIFY_PATCHES = (1, 4)
MAE_PATCH = 2
DIT_PATCH = 1


def _params(ctx: Ctx):
    from pixbench.config import load_params

    return load_params(ctx.params)


def _paths():
    from pixbench.config import Paths

    return Paths()  # PIXBENCH_* point into the check's work dir (set by the check)


def expected_precision(recipe: str, size: str, device: str) -> str:
    import torch

    from pixbench.tasks.classify.engine import use_bf16

    return "bf16" if use_bf16(recipe, size, torch.device(device)) else "fp32"


def dit_precision(recipe: str, size: str, device: str) -> str:
    """What `precision` would mean for a DiT (the classify rule, on the DiT's width)."""
    from pixbench.models.dit import DIT_SIZES

    if recipe != "auto":
        return recipe
    return "bf16" if device == "cuda" or DIT_SIZES[size]["hidden_size"] >= 192 else "fp32"


def check_metrics(m: dict, ctx: Ctx, *, precision: str | None = None) -> list[str]:
    """The checks every task's metrics must pass; returns notes for the detail line."""
    bad = sorted(k for k, v in m.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise CheckFailed(f"non-finite metrics: {', '.join(bad)}")
    if m.get("device") not in (None, ctx.device):
        raise CheckFailed(f"ran on {m['device']}, not {ctx.device}")
    notes = []
    if precision is not None:
        if "precision" not in m:
            if precision == "bf16":
                notes.append("NOTE: the recipe's precision resolves to bf16 here, but the task "
                             "neither applies nor reports it (it trains in fp32)")
        elif m["precision"] != precision:
            raise CheckFailed(f"trained in {m['precision']}; the recipe asks for {precision}")
    if ctx.device == "cuda" and "peak_mem_kind" in m:
        if m["peak_mem_kind"] != "cuda_max_allocated" or not (m.get("peak_mem_mb") or 0) > 0:
            raise CheckFailed(f"no CUDA memory figure ({m.get('peak_mem_kind')}, "
                              f"{m.get('peak_mem_mb')})")
    return notes


def _fmt(m: dict, keys: dict[str, str]) -> list[str]:
    out = []
    for key, fmt in keys.items():
        v = m.get(key)
        if v is not None:
            out.append(fmt.format(v))
    return out


def _result(m: dict, notes: list[str], keys: dict[str, str]) -> dict:
    shown = _fmt(m, keys)
    figures = {k: m[k] for k in keys if isinstance(m.get(k), (int, float, str))}
    return {"detail": ", ".join(shown + notes), "figures": figures}


CLASSIFY_KEYS = {"display": "{}", "tokens": "{} tokens", "steps": "{} steps",
                 "precision": "{}", "top1": "top-1 {:.1f}%", "train_img_per_s":
                 "{:,.0f} train img/s", "peak_mem_mb": "peak {:,.0f} MB"}


def run_task(ctx: Ctx, spec, task: str | None = None) -> dict:
    """The task as `pixbench ... --device cuda` runs it here: launch.launch (which takes the
    task from `spec.task`), local launcher (named, so a PIXBENCH_CLUSTER in the environment
    cannot send it to SLURM), the task table's run function, progress lines into the step's
    log. `task`: the task the step means to run, checked against the spec and the table."""
    from pixbench.launch import launch
    from pixbench.tasks.table import TASKS

    entry = TASKS.get(spec.task)
    if entry is None or not isinstance(spec, entry.spec) or task not in (None, spec.task):
        raise CheckFailed(f"{type(spec).__name__} names task {spec.task!r}; the step means "
                          f"{task or spec.task!r} and the task table (pixbench.tasks.table) "
                          f"has {entry.spec.__name__ if entry else 'no such task'}")
    return launch(spec, _paths(), launcher="local", cluster=None, device=ctx.device)


def _classify_run(ctx: Ctx, spec) -> dict:
    m = run_task(ctx, spec)
    if not m.get("steps"):
        raise CheckFailed("no optimiser step was taken")
    notes = check_metrics(m, ctx, precision=expected_precision(
        spec.classify.precision, spec.size, ctx.device))
    return _result(m, notes, CLASSIFY_KEYS)


def classify(ctx: Ctx, patch: int) -> dict:
    from pixbench.config import make_classify_spec

    spec = make_classify_spec(_params(ctx), size=ctx.form.vit, patch=patch, seed=0)
    return _classify_run(ctx, spec)


def classify_p1(ctx: Ctx) -> dict:
    return classify(ctx, 1)


def classify_p4(ctx: Ctx) -> dict:
    return classify(ctx, 4)


def mae_pretrain(ctx: Ctx) -> dict:
    from pixbench.config import make_pretrain_spec

    spec = make_pretrain_spec(_params(ctx), size=ctx.form.vit, patch=MAE_PATCH, seed=0)
    m = run_task(ctx, spec, "mae-pretrain")
    notes = check_metrics(m, ctx, precision=expected_precision(
        spec.pretrain.precision, spec.size, ctx.device))
    return _result(m, notes, {"display": "{}", "tokens": "{} tokens", "steps": "{} steps",
                              "precision": "{}", "recon_loss": "recon loss {:.3f}",
                              "train_img_per_s": "{:,.0f} train img/s"})


def mae_finetune(ctx: Ctx) -> dict:
    from pixbench.config import make_mae_spec

    spec = make_mae_spec(_params(ctx), task="mae-finetune", size=ctx.form.vit, patch=MAE_PATCH,
                         seed=0)
    return _classify_run(ctx, spec)  # loads the pre-trained encoder (checked) first


def _gen(ctx: Ctx, task: str, keys: dict[str, str], **cell) -> dict:
    """A generation-track task: its spec factory (as the CLI's), then the task table's run."""
    from pixbench import config

    make = {"vq": config.make_vq_spec, "vq-encode": config.make_encode_spec,
            "featnet": config.make_featnet_spec, "vq-eval": config.make_vq_eval_spec,
            "dit": config.make_dit_spec, "dit-eval": config.make_dit_eval_spec}[task]
    spec = make(_params(ctx), **cell)
    m = run_task(ctx, spec, task)
    precision = None
    if task == "dit":
        precision = dit_precision(spec.dit.precision, spec.size, ctx.device)
    return _result(m, check_metrics(m, ctx, precision=precision), keys)


def _dit_cell(ctx: Ctx) -> dict:
    return {"size": ctx.form.dit, "patch": DIT_PATCH, "seed": 0}


def vq_train(ctx: Ctx) -> dict:
    return _gen(ctx, "vq", {"steps": "{} steps", "final_l1": "L1 {:.3f}",
                            "code_restarts": "{} code restarts",
                            "train_img_per_s": "{:,.0f} train img/s"})


def vq_encode(ctx: Ctx) -> dict:
    return _gen(ctx, "vq-encode", {"latent_shape": "latents {}", "encode_s": "{:.2f} s",
                                   "scale_factor": "scale factor {:.3f}"})


def featnet_train(ctx: Ctx) -> dict:
    return _gen(ctx, "featnet", {"steps": "{} steps", "val_top1": "val top-1 {:.2f}"})


def vq_eval(ctx: Ctx) -> dict:
    return _gen(ctx, "vq-eval", {"psnr": "PSNR {:.1f}", "l1": "L1 {:.3f}",
                                 "rfid_featnet": "rFID {:.3g}", "codebook_usage":
                                 "codebook usage {:.2f}"})


def dit_train(ctx: Ctx) -> dict:
    return _gen(ctx, "dit", {"display": "{}", "tokens": "{} tokens", "steps": "{} steps",
                             "train_loss": "loss {:.3f}", "train_img_per_s":
                             "{:,.0f} train img/s"}, **_dit_cell(ctx))


def dit_evaluate(ctx: Ctx) -> dict:
    return _gen(ctx, "dit-eval", {"num_samples": "{} samples", "fid_featnet": "FID {:.3g}",
                                  "sample_img_per_s": "{:,.0f} samples/s"}, **_dit_cell(ctx))
