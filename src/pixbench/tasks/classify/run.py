"""One classification cell (size, patch, seed[, variant]) from a spec to metrics.json: the
from-scratch classifier, the locality ablations and the MAE fine-tune / probe / scratch runs
(spec.init names the pre-trained encoder)."""

from __future__ import annotations

import torch
from torch import nn

from pixbench import distributed
from pixbench.config import Paths, RunSpec
from pixbench.data.augment import normalize
from pixbench.data.cache import load_cache
from pixbench.errors import UserError
from pixbench.models.flops import vit_forward_flops, vit_train_flops
from pixbench.eval.measure import measure_inference, measure_train
from pixbench.models.locality import local_swap_permutation, shuffle_permutation
from pixbench.models.vit import display_name, model_key, vit, vit_shape
from pixbench.runio import load_checkpoint
from pixbench.tasks.classify.engine import (ClassifyBody, Tensors, load_tensors, train_epochs,
                                            use_bf16)
from pixbench.tasks.runner import Run, State
from pixbench.tasks.trainer import identity, run_task

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


def metrics(run: Run, model: nn.Module, manifest: dict, data: Tensors, final: dict,
            state: State, *, bf16: bool) -> dict:
    """metrics.json of a cell (rank 0): the final val numbers, the model's size and FLOPs, its
    measured train and inference throughput."""
    spec, m, device = run.spec, manifest, run.device
    shape = vit_shape(size=spec.size, patch=spec.patch, image_size=m["image_size"],
                      in_chans=m["channels"], num_classes=m["num_classes"], pool=spec.classify.pool)
    b = min(spec.classify.batch_size, data.train_x.shape[0])
    x = normalize(data.train_x[:b], data.mean, data.std).to(device)
    y = data.train_y[:b].to(device)
    steps = spec.classify.throughput_steps
    speed = {**measure_train(model, x, y, bf16=bf16, steps=steps),
             **measure_inference(model, x, bf16=bf16, steps=steps)}
    # the epochs trained: the recipe's, or more where min_steps grew them (`steps` is in identity)
    epochs = train_epochs(spec.classify, data.train_x.shape[0] // spec.classify.batch_size)
    return {
        **identity(run, state), "model": model_key(spec.size, spec.patch),
        "display": display_name(spec.size, spec.patch),
        "dataset": m["source"], "image_size": m["image_size"], "size": spec.size,
        "patch": spec.patch, "variant": spec.variant,
        "pos_embed": spec.classify.pos_embed, "permutation": spec.classify.permutation.kind,
        "tokens": shape.patch_tokens, "num_classes": m["num_classes"],
        "params": sum(p.numel() for p in model.parameters()),
        "top1": final["top1"], "top5": final["top5"], "loss": final["loss"], "val_n": final["n"],
        "train_loss": state.history[-1]["train_loss"] if state.history else None,
        "gflops_infer": vit_forward_flops(shape) / 1e9, "gflops_train": vit_train_flops(shape) / 1e9,
        **speed, "precision": "bf16" if bf16 else "fp32",
        "epochs": epochs, "images_seen": state.global_step * spec.classify.batch_size,
        "eval_img_per_s": final["n"] / final["eval_s"],
    }


class Cell(ClassifyBody):
    """A classification cell: the engine's body plus its outputs."""

    def __init__(self, manifest: dict, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.manifest = manifest

    def outputs(self, run: Run, state: State) -> dict:
        final = self.evaluate(run.check_results)
        if not run.is_main:  # the throughput probe would time only one rank's share
            return {}
        return metrics(run, distributed.unwrap(self.model), self.manifest, self.data, final,
                       state, bf16=self.bf16)


def run(spec: RunSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True, loader_workers: int | None = None) -> dict:
    """Train and evaluate one cell; resumes from ckpt/last.pt; reuses a finished run.
    `loader_workers`: input worker processes (a machine choice; None: data/loader.py's)."""

    def build(r: Run) -> Cell:
        ds, data = load_data(spec, paths)
        model = build_model(spec, ds.manifest)
        if spec.init is not None:
            load_pretrained_encoder(model, spec, paths)
        bf16 = use_bf16(spec.classify.precision, spec.size, r.device)
        model = distributed.wrap(model.to(r.device), r.device)
        return Cell(ds.manifest, spec, model, data, device=r.device, bf16=bf16,
                    live_dir=r.dir / "dvclive" if r.is_main else None,
                    loader_workers=loader_workers)

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress,
                    checkpoint_every_s=spec.classify.checkpoint_every_s)
