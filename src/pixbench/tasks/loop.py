"""The classification epoch loop: resume, one checkpoint path, dvclive, a rich progress bar.

One function owns the checkpoint path (`ckpt/last.pt`) for both saving and resuming, so the
MAE launcher's bug (resume from checkpoint.pth, save checkpoint-%d.pth) cannot happen here.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch import nn

from pixbench import distributed
from pixbench.config import RunSpec
from pixbench.errors import UserError
from pixbench.runio import CKPT_NAME, load_checkpoint, save_checkpoint
from pixbench.tasks.classify import (CURVE_VAL_IMAGES, State, Tensors, balanced_subset, evaluate,
                                     param_groups, train_one_epoch)


def make_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.Optimizer:
    o = spec.classify.optim
    return optimizer_for(model, o)


def optimizer_for(model: nn.Module, o) -> torch.optim.Optimizer:
    # lr is overwritten every step by the schedule (lr_at), so no scheduler state is saved
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas)


def restore(model: nn.Module, opt: torch.optim.Optimizer, ckpt_path: Path, spec) -> State:
    """Load ckpt/last.pt into model and optimizer; a checkpoint of another spec is an error."""
    if not ckpt_path.exists():
        return State()
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "spec_digest" not in ckpt:
        raise UserError(f"{ckpt_path}: not a pixbench checkpoint")
    if ckpt["spec_digest"] != spec.digest():
        raise UserError(f"{ckpt_path}: checkpoint was written for another spec "
                        f"({ckpt['spec_digest']} != {spec.digest()}); pass --stale restart")
    try:
        distributed.unwrap(model).load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"{ckpt_path}: does not fit this model ({str(exc).splitlines()[0]})") from None
    return State(**ckpt["state"])


class Checkpointer:
    """Writes ckpt/last.pt every `every_s` seconds mid-epoch and at every epoch end."""

    def __init__(self, path: Path, model: nn.Module, opt: torch.optim.Optimizer, spec,
                 state: State, every_s: float) -> None:
        self.path, self.model, self.opt, self.spec = path, model, opt, spec
        self.every_s = every_s
        self.session_start = time.monotonic()
        self.wall_base = state.wall_time_s
        self.last = time.monotonic()

    def __call__(self, state: State, final: bool) -> None:
        now = time.monotonic()
        if not final and now - self.last < self.every_s:
            return
        state.wall_time_s = self.wall_base + (now - self.session_start)
        self.last = now
        if not distributed.is_main():
            return
        save_checkpoint(self.path, {
            "model": distributed.unwrap(self.model).state_dict(), "optimizer": self.opt.state_dict(),
            "state": dataclasses.asdict(state), "spec_digest": self.spec.digest(),
            "spec": self.spec.canonical(), "torch": torch.__version__,
        })


def _progress(enabled: bool, total: int):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not (enabled and sys.stderr.isatty()), transient=False)


def train_loop(model: nn.Module, spec: RunSpec, data: Tensors, run_dir: Path, *,
               device: torch.device, bf16: bool, progress: bool = True) -> tuple[dict, State]:
    """Train from the checkpoint (if any) to the last epoch; returns final val metrics, state."""
    from dvclive import Live  # lazy: dvclive imports dvc

    cfg = spec.classify
    opt = make_optimizer(model, spec)
    state = restore(model, opt, run_dir / CKPT_NAME, spec)
    ckpt = Checkpointer(run_dir / CKPT_NAME, model, opt, spec, state, cfg.checkpoint_every_s)
    steps_per_epoch = data.train_x.shape[0] // cfg.batch_size
    curve_n = min(CURVE_VAL_IMAGES, data.val_x.shape[0])
    # a fixed class-balanced subset: ImageFolder val splits are sorted by class
    curve_idx = torch.from_numpy(balanced_subset(data.val_y.numpy(), curve_n,
                                                 int(data.val_y.max()) + 1))
    curve_x, curve_y = data.val_x[curve_idx], data.val_y[curve_idx]
    ev = dict(device=device, batch_size=cfg.eval_batch_size, bf16=bf16)
    live = Live(dir=str(run_dir / "dvclive"), dvcyaml=None, report=None, save_dvc_exp=False,
                resume=state.global_step > 0) if distributed.is_main() else None
    def curve_point(s: State, train_loss: float) -> None:
        """Val top-1 on the fixed curve subset; recorded in the checkpointed history."""
        curve = evaluate(model, curve_x, curve_y, data.mean, data.std, **ev)
        s.history.append({"epoch": round(s.global_step / steps_per_epoch, 4), "step": s.global_step,
                          "images_seen": s.global_step * cfg.batch_size, "train_loss": train_loss,
                          "val_top1_subset": curve["top1"], "train_time_s": s.train_time_s})
        if live is not None:
            live.log_metric("train/loss", train_loss)
            live.log_metric("val/top1_subset", curve["top1"])
            live.next_step()

    with _progress(progress and distributed.is_main(), steps_per_epoch * cfg.epochs) as bar:
        task = bar.add_task(spec.run_id, total=steps_per_epoch * cfg.epochs,
                            completed=state.global_step, info="")

        def on_step(s: State, loss: float, lr: float) -> None:
            bar.update(task, completed=s.global_step, info=f"ep {s.epoch} loss {loss:.3f}")
            if cfg.curve_every_steps and s.global_step % cfg.curve_every_steps == 0 \
                    and s.step < steps_per_epoch:
                curve_point(s, s.loss_sum / max(1, s.loss_count))

        while state.epoch < cfg.epochs:
            train_loss = train_one_epoch(model, opt, data, spec, state, device=device, bf16=bf16,
                                         on_step=on_step, on_checkpoint=ckpt)
            curve_point(state, train_loss)
            state.epoch, state.step, state.loss_sum, state.loss_count = state.epoch + 1, 0, 0.0, 0
            ckpt(state, final=True)
            if distributed.is_main():
                print(f"{spec.run_id} epoch {state.epoch}/{cfg.epochs} loss {train_loss:.4f} "
                      f"val@{curve_n} {state.history[-1]['val_top1_subset']:.2f}%",
                      file=sys.stderr, flush=True)
    final = evaluate(model, data.val_x, data.val_y, data.mean, data.std, **ev)
    if live is not None:
        for k in ("top1", "top5", "loss"):
            live.summary[f"val/{k}"] = final[k]
        live.end()
    return final, state
