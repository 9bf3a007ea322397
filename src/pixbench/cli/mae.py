"""`pixbench mae pretrain|finetune|linprobe|scratch`: the MAE track, one cell per command."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pixbench.cli.options import PatchOpt, SeedOpt, noun, size_option, spec_command

app = noun("mae", help="MAE track: pre-train, fine-tune, linear probe, scratch baseline.")

SizeOpt = size_option("Model size key; default: mae_sweep.sizes[0].")
TargetOpt = Annotated[Optional[str], typer.Option(
    "--target", help="Pre-training target variant (mae_sweep.alt_target), if not the profile's.")]
KEYS = ("run_id", "top1", "recon_loss", "tokens", "gflops_train", "train_img_per_s", "wall_s",
        "job_id", "state")
COMMANDS = (  # (command, task, help)
    ("pretrain", "mae-pretrain", "Masked-autoencoder pre-training of one cell."),
    ("finetune", "mae-finetune", "Fine-tune the cell's pre-trained encoder (full)."),
    ("linprobe", "mae-linprobe", "Linear probe on the cell's frozen encoder."),
    ("scratch", "mae-scratch", "The fine-tune recipe from random init (baseline)."),
)


def _spec_maker(task: str):
    def make_spec(params, patch: PatchOpt, seed: SeedOpt = 0, size: SizeOpt = None,
                  target: TargetOpt = None):
        from pixbench.config import make_mae_spec, make_pretrain_spec

        if task == "mae-pretrain":
            return make_pretrain_spec(params, size=size, patch=patch, seed=seed, target=target)
        return make_mae_spec(params, task=task, size=size, patch=patch, seed=seed, target=target)

    return make_spec


for _name, _task, _doc in COMMANDS:
    spec_command(app, _name, keys=KEYS, doc=_doc)(_spec_maker(_task))
