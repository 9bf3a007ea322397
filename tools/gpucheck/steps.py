"""The check's steps, in launch order, with what each proves, what it needs and its limit.

Limits are for the GPU form on the lent H200 (16 cores) and hold for the CPU form on two
cores; the whole check also has a budget (`--budget`, default 450 s): a step that would start
with under 10 s of it left is `not-run`, and the benchmark, which runs last and alone, stops
starting cases at its own limit minus a margin so its files are always written.
"""

from __future__ import annotations

from gpucheck import ddp, steps_checks, steps_tasks
from gpucheck.harness import Step

TASK_DEPS = ("data",)


def all_steps(cpu: bool) -> list[Step]:
    dev = "CPU" if cpu else "CUDA"
    back = "gloo" if cpu else "NCCL"
    t = steps_tasks
    return [
        Step("env", steps_checks.env, f"{dev} device, library versions, a synchronised matmul",
             (), 90),
        Step("data", steps_checks.data, "tiny generated caches; params = recipes + overrides",
             ("env",), 90),
        Step("classify-p1", t.classify_p1, f"classify task at p=1 (pixel tokens) on {dev}, "
             "recipe precision", TASK_DEPS, 150),
        Step("classify-p4", t.classify_p4, f"classify task at p=4 on {dev}", TASK_DEPS, 120),
        Step("mae-pretrain", t.mae_pretrain, f"MAE pre-training task on {dev}", TASK_DEPS, 120),
        Step("mae-finetune", t.mae_finetune, "MAE fine-tune from the pre-trained encoder",
             ("mae-pretrain",), 120),
        Step("vq", t.vq_train, f"VQ tokenizer training (GAN on) on {dev}", TASK_DEPS, 150),
        Step("featnet", t.featnet_train, f"FeatNet (FID features) training on {dev}",
             TASK_DEPS, 120),
        Step("vq-encode", t.vq_encode, "latents encoded by the trained tokenizer", ("vq",), 90),
        Step("vq-eval", t.vq_eval, "tokenizer reconstruction metrics (rFID, PSNR)",
             ("vq", "featnet"), 120),
        Step("dit", t.dit_train, f"DiT training on latents, FID probe, on {dev}",
             ("vq-encode", "featnet"), 150),
        Step("dit-eval", t.dit_evaluate, "DiT sampling (DDIM, guidance) and FID",
             ("dit",), 150),
        Step("bf16-agreement", steps_checks.bf16_agreement, "bf16 autocast vs fp32 on one "
             "train step", ("env",), 90),
        Step("attention", steps_checks.attention, "fused (flash) attention vs math at "
             "pixel-token length; ViT/1 step with flash only", ("env",), 90),
        Step("ddp-1", ddp.ddp_1, f"{back} process group, world 1 (mp spawn), DDP grads, "
             "classify", TASK_DEPS, 150),
        Step("ddp-2", ddp.ddp_2, f"{back} world 2 (one rank per GPU; skipped on one GPU)",
             TASK_DEPS, 180),
        Step("bench", steps_checks.bench, "benchmark suite: peak, MFU, memory, scaling",
             ("env",), 300, exclusive=True),
    ]


def select(steps: list[Step], only: list[str], skip: list[str]) -> list[Step]:
    """`only`: these steps and every step they need; `skip`: drop these (and what needs them
    is then blocked, so the summary says so)."""
    by_name = {s.name: s for s in steps}
    unknown = [n for n in only + skip if n not in by_name]
    if unknown:
        raise ValueError(f"unknown step(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    keep = set(by_name)
    if only:
        keep, todo = set(), list(only)
        while todo:
            name = todo.pop()
            if name not in keep:
                keep.add(name)
                todo += by_name[name].deps
    return [s for s in steps if s.name in keep and s.name not in skip]
