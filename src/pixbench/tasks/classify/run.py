"""One classification cell (size, patch, seed[, variant]) from a spec to metrics.json: the
from-scratch classifier, the locality ablations and the MAE fine-tune / probe / scratch runs
(spec.init names the pre-trained encoder)."""

from __future__ import annotations

import sys

import torch
from torch import nn

from pixbench import distributed
from pixbench.config import Paths, RunSpec
from pixbench.data.augment import normalize
from pixbench.data.cache import load_cache
from pixbench.data.subsets import balanced_subset
from pixbench.errors import UserError
from pixbench.eval.flops import vit_forward_flops, vit_train_flops
from pixbench.eval.measure import measure_inference, measure_train
from pixbench.models.locality import local_swap_permutation, shuffle_permutation
from pixbench.models.vit import display_name, model_key, vit, vit_shape
from pixbench.runio import load_checkpoint
from pixbench.tasks.classify.engine import Tensors, evaluate, load_tensors, train_one_epoch, use_bf16
from pixbench.tasks.livelog import open_live
from pixbench.tasks.optim import adamw
from pixbench.tasks.runner import Run, State

CURVE_VAL_IMAGES = 1000  # fixed val subset for the learning curve (the full val set is the final metric)
HEAD_KEYS = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}


def pixel_permutation(cfg, image_size: int) -> torch.Tensor | None:
    perm = cfg.permutation
    if perm.kind == "shuffle":
        return shuffle_permutation(image_size, image_size, perm.seed)
    if perm.kind == "local":
        return local_swap_permutation(image_size, image_size, perm.swaps, perm.distance, perm.seed)
    return None


def build_model(spec: RunSpec, ds_manifest: dict) -> nn.Module:
    """The one place config becomes model kwargs; seeded so init is a function of the seed."""
    torch.manual_seed(spec.seed)
    size = ds_manifest["image_size"]
    return vit(size=spec.size, patch=spec.patch, image_size=size,
               in_chans=ds_manifest["channels"], num_classes=ds_manifest["num_classes"],
               pool=spec.classify.pool, drop_path=spec.classify.drop_path,
               pos_embed=spec.classify.pos_embed,
               pixel_perm=pixel_permutation(spec.classify, size))


def load_pretrained_encoder(model: nn.Module, spec: RunSpec, paths: Paths) -> None:
    """Load the MAE encoder of spec.init exactly (checked), and freeze it for a linear probe."""
    path = paths.run_dir(spec.profile, spec.init["run_id"]) / "encoder.pt"
    if not path.is_file():
        raise UserError(f"pre-trained encoder not found: {path} (run `pixbench mae pretrain "
                        f"--patch {spec.patch} --seed {spec.seed}` first)")
    ckpt = load_checkpoint(path)
    if ckpt.get("spec_digest") != spec.init["digest"]:
        raise UserError(f"{path}: encoder of another pre-training spec than params.yaml gives; "
                        "re-run the pre-training")
    missing, unexpected = model.load_state_dict(ckpt["encoder"], strict=False)
    if unexpected or not set(missing) <= HEAD_KEYS:
        raise UserError(f"{path}: encoder does not fit ViT-{spec.size}/{spec.patch} "
                        f"(missing {sorted(set(missing) - HEAD_KEYS)[:3]}, unexpected {unexpected[:3]})")
    if spec.task == "mae-linprobe":  # only the pooled-feature norm and the head train
        for name, p in model.named_parameters():
            p.requires_grad_(name in HEAD_KEYS)


def load_data(spec: RunSpec, paths: Paths):
    """The cache and the run's tensors, checked before anything is written."""
    ds = load_cache(paths.cache_for(spec.profile))
    if ds.manifest.get("spec") != spec.data.model_dump():
        raise UserError(f"{paths.cache_for(spec.profile)}: cache was prepared for another data "
                        "spec; re-run `pixbench data prepare`")
    if ds.image_size % spec.patch:
        raise UserError(f"--patch {spec.patch} does not divide the cached image size {ds.image_size}")
    data = load_tensors(ds, spec.classify.train_subset, spec.classify.val_subset)
    if data.train_x.shape[0] < spec.classify.batch_size:
        raise UserError(f"classify.batch_size={spec.classify.batch_size} exceeds the "
                        f"{data.train_x.shape[0]} training images")
    return ds, data


def train(run: Run, model: nn.Module, data: Tensors, *, bf16: bool, progress: bool,
          loader_workers: int | None = None) -> tuple[dict, State]:
    """Train from the checkpoint (if any) to the last epoch; returns final val metrics, state."""
    spec, cfg, dev = run.spec, run.spec.classify, run.device
    opt = adamw(distributed.unwrap(model), cfg.optim)
    state = run.restore(model=model, optimizer=opt)
    steps_per_epoch = data.train_x.shape[0] // cfg.batch_size
    curve_n = min(CURVE_VAL_IMAGES, data.val_x.shape[0])
    # a fixed class-balanced subset: ImageFolder val splits are sorted by class
    curve_idx = torch.from_numpy(balanced_subset(data.val_y.numpy(), curve_n,
                                                 int(data.val_y.max()) + 1))
    curve_x, curve_y = data.val_x[curve_idx], data.val_y[curve_idx]
    ev = dict(device=dev, batch_size=cfg.eval_batch_size, bf16=bf16)
    # dvclive's steps are the curve rows: resume at the checkpoint's row count (no duplicates)
    live = open_live(run.dir / "dvclive", len(state.history),
                     resume=state.global_step > 0) if run.is_main else None

    def curve_point(s: State, train_loss: float) -> None:
        """Val top-1 on the fixed curve subset; recorded in the checkpointed history."""
        run.check(s)  # a diverged run logs no NaN row
        top1 = evaluate(model, curve_x, curve_y, data.mean, data.std, **ev)["top1"]
        s.history.append({"epoch": round(s.global_step / steps_per_epoch, 4), "step": s.global_step,
                          "images_seen": s.global_step * cfg.batch_size, "train_loss": train_loss,
                          "val_top1_subset": top1, "train_time_s": s.train_time_s})
        if live is not None:
            live.step = len(s.history) - 1
            live.log_metric("train/loss", train_loss)
            live.log_metric("val/top1_subset", top1)
            live.next_step()

    def on_step(s: State, loss: float) -> None:
        if cfg.curve_every_steps and s.global_step % cfg.curve_every_steps == 0 \
                and s.epoch_step < steps_per_epoch:
            curve_point(s, s.loss_sum / max(1, s.loss_count))
        if s.epoch_step < steps_per_epoch:
            run.tick(s)

    while state.epoch < cfg.epochs:
        train_loss = train_one_epoch(model, opt, data, cfg, spec.seed, state, device=dev,
                                     bf16=bf16, on_step=on_step, loader_workers=loader_workers)
        curve_point(state, train_loss)
        state.epoch, state.epoch_step = state.epoch + 1, 0
        state.take_mean_loss()
        run.save(state)
        if run.is_main and progress:
            print(f"{spec.run_id} epoch {state.epoch}/{cfg.epochs} loss {train_loss:.4f} "
                  f"val@{curve_n} {state.history[-1]['val_top1_subset']:.2f}%",
                  file=sys.stderr, flush=True)
    final = evaluate(model, data.val_x, data.val_y, data.mean, data.std, **ev)
    run.check_results(final)
    if live is not None:
        for k in ("top1", "top5", "loss"):
            live.summary[f"val/{k}"] = final[k]
        live.end()
    return final, state


def compute_metrics(model: nn.Module, spec: RunSpec, manifest: dict, data: Tensors, final: dict,
                    state: State, *, device: torch.device, bf16: bool) -> dict:
    m = manifest
    shape = vit_shape(size=spec.size, patch=spec.patch, image_size=m["image_size"],
                      in_chans=m["channels"], num_classes=m["num_classes"], pool=spec.classify.pool)
    b = min(spec.classify.batch_size, data.train_x.shape[0])
    x = normalize(data.train_x[:b], data.mean, data.std).to(device)
    y = data.train_y[:b].to(device)
    steps = spec.classify.throughput_steps
    speed = {**measure_train(model, x, y, bf16=bf16, steps=steps),
             **measure_inference(model, x, bf16=bf16, steps=steps)}
    return {
        "run_id": spec.run_id, "task": spec.task, "model": model_key(spec.size, spec.patch),
        "display": display_name(spec.size, spec.patch), "profile": spec.profile,
        "dataset": m["source"], "image_size": m["image_size"], "size": spec.size,
        "patch": spec.patch, "seed": spec.seed, "variant": spec.variant,
        "pos_embed": spec.classify.pos_embed, "permutation": spec.classify.permutation.kind,
        "tokens": shape.patch_tokens, "num_classes": m["num_classes"],
        "params": sum(p.numel() for p in model.parameters()),
        "top1": final["top1"], "top5": final["top5"], "loss": final["loss"], "val_n": final["n"],
        "train_loss": state.history[-1]["train_loss"] if state.history else None,
        "gflops_infer": vit_forward_flops(shape) / 1e9, "gflops_train": vit_train_flops(shape) / 1e9,
        **speed, "precision": "bf16" if bf16 else "fp32", "device": device.type,
        "epochs": spec.classify.epochs, "steps": state.global_step,
        "images_seen": state.global_step * spec.classify.batch_size,
        "train_s": state.train_time_s, "wall_s": state.wall_time_s,
        "eval_img_per_s": final["n"] / final["eval_s"], "spec_digest": spec.digest(),
    }


def run(spec: RunSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True, loader_workers: int | None = None) -> dict:
    """Train and evaluate one cell; resumes from ckpt/last.pt; reuses a finished run.
    `loader_workers`: input worker processes (a machine choice; None: data/loader.py's)."""
    r = Run.open(spec, paths, stale=stale, device=device,
                 checkpoint_every_s=spec.classify.checkpoint_every_s)
    if not isinstance(r, Run):
        return r
    with r:
        ds, data = load_data(spec, paths)
        model = build_model(spec, ds.manifest)
        if spec.init is not None:
            load_pretrained_encoder(model, spec, paths)
        r.describe()
        bf16 = use_bf16(spec.classify.precision, spec.size, r.device)
        model = distributed.wrap(model.to(r.device), r.device)
        final, state = train(r, model, data, bf16=bf16, progress=progress,
                             loader_workers=loader_workers)
        metrics = {}
        if r.is_main:  # the throughput probe would time only one rank's share of the machine
            metrics = compute_metrics(distributed.unwrap(model), spec, ds.manifest, data, final,
                                      state, device=r.device, bf16=bf16)
        return r.finish(metrics, curve=state.history)
