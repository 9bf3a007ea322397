"""The task table: every task pixbench runs, defined once.

A task is a name, its spec class (config/), its body (the function that turns the spec into
metrics), the result numbers `verify` compares, whether it has a finished state, and the DVC
stages that run it. Launch, verify, the study, the CLI's spec commands, the cluster profiles'
`tasks:` keys and the GPU check all read this table; a test checks that dvc.yaml and the
specs' `task` fields agree with it (tests/test_task_table.py).

Bodies are imported when a task runs, not when the table is read: a body imports torch and
timm (~4-5 s of CPU), and `dvc repro` starts one CLI process per finished cell that only
re-publishes its metrics. Each body is still a plain `from ... import` a reader can follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pixbench.config import (DitEvalSpec, DitSpec, EncodeSpec, FeatNetSpec, PretrainSpec, RunSpec,
                             VQEvalSpec, VQSpec)
from pixbench.config.pipeline import PrepareSpec, ReportSpec, VerifySpec
from pixbench.errors import UserError


@dataclass(frozen=True)
class Task:
    name: str  # the spec's `task`, the CLI's and the cluster profiles' key
    spec: type  # its spec class: `spec.model_validate(dict)` rebuilds a submitted job's spec
    body: Callable[[], Callable]  # returns run(spec, paths, *, stale, device, progress) -> dict
    results: tuple[str, ...] = ()  # metrics that must reproduce (verify), not speeds
    stateless: bool = False  # no finished state: rebuilt wherever it runs (the record job)
    shared_upstream: str | None = None  # a model every seed shares (verify: one replicate)
    stages: tuple[str, ...] = ()  # the dvc.yaml stages that run it
    ranked_by: tuple[str, bool] | None = None  # (metric, higher is better): patch sizes ranked
    baseline: str | None = None  # the task each patch size is also compared with (ranked_by)

    def run(self, spec, paths, **kwargs) -> dict:
        """Run the body. A stateless task (report, verify) reads the other tasks' results, so
        it is handed this table (it cannot import it: the table names it as a body)."""
        if self.stateless:
            kwargs["tasks"] = TASKS
        return self.body()(spec, paths, **kwargs)


def _prepare():
    from pixbench.tasks.prepare import prepare_and_publish
    return prepare_and_publish


def _report():
    from pixbench.report import run
    return run


def _verify():
    from pixbench.verify import run
    return run


def _classify():
    from pixbench.tasks.classify.run import run
    return run


def _mae_pretrain():
    from pixbench.tasks.mae.run import run
    return run


def _vq():
    from pixbench.tasks.gen.vq import run
    return run


def _vq_encode():
    from pixbench.tasks.gen.latents import run_encode
    return run_encode


def _vq_eval():
    from pixbench.tasks.gen.latents import run_eval
    return run_eval


def _featnet():
    from pixbench.tasks.gen.featnet import run
    return run


def _dit():
    from pixbench.tasks.gen.dit import run
    return run


def _dit_eval():
    from pixbench.tasks.gen.dit_eval import run_eval
    return run_eval


# Every DiT trains on the latents of one tokenizer (gen_sweep.tokenizer_seed) and dit-eval
# scores with one FeatNet: see verify/compare.py for what that does to a group's spread.
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("prepare", PrepareSpec, _prepare, stages=("prepare", "prepare-gen")),
    Task("report", ReportSpec, _report, stateless=True, stages=("report",)),
    Task("verify", VerifySpec, _verify, stateless=True, stages=("verify",)),
    Task("classify", RunSpec, _classify, ("top1",), stages=("classify", "locality"),
         ranked_by=("top1", True)),
    Task("mae-finetune", RunSpec, _classify, ("top1",), stages=("mae-finetune",),
         ranked_by=("top1", True), baseline="mae-scratch"),  # pre-trained vs from scratch
    Task("mae-linprobe", RunSpec, _classify, ("top1",), stages=("mae-linprobe",),
         ranked_by=("top1", True)),
    Task("mae-scratch", RunSpec, _classify, ("top1",), stages=("mae-scratch",)),
    Task("mae-pretrain", PretrainSpec, _mae_pretrain, ("recon_loss",),
         stages=("mae-pretrain", "mae-pretrain-alt")),
    Task("vq", VQSpec, _vq, ("final_l1",), stages=("vq-train",)),
    Task("vq-encode", EncodeSpec, _vq_encode, stages=("vq-encode",)),
    Task("vq-eval", VQEvalSpec, _vq_eval, ("psnr", "rfid_featnet"), stages=("vq-eval",)),
    Task("featnet", FeatNetSpec, _featnet, ("val_top1",), stages=("featnet",)),
    Task("dit", DitSpec, _dit, ("train_loss",), shared_upstream="tokenizer",
         stages=("dit-train",)),
    Task("dit-eval", DitEvalSpec, _dit_eval, ("fid_featnet",),
         shared_upstream="tokenizer, FeatNet", stages=("dit-eval",),
         ranked_by=("fid_featnet", False)),
)}

STATELESS = frozenset(t.name for t in TASKS.values() if t.stateless)
RESULTS = {t.name: t.results for t in TASKS.values() if t.results}


def task(name: str) -> Task:
    """The table's entry, or a one-line refusal naming the known tasks."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]
