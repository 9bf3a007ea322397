"""The MAE track end to end on the tiny cache: pre-train, fine-tune, linear probe, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixbench.tasks.table import TASKS
from pixbench.config import Paths, load_params, make_mae_spec, make_pretrain_spec
from pixbench.errors import UserError
from pixbench.runio import CKPT_NAME
from pixbench.tasks import runner
from pixbench.tasks.classify import run as classify
from pixbench.tasks.mae import run as mae


def _pre(params_path, patch=2, seed=0):
    return make_pretrain_spec(load_params(params_path), size=None, patch=patch, seed=seed)


def test_pretrain_writes_encoder_reconstructions_metrics(tiny_project):
    spec = _pre(tiny_project)
    metrics = mae.run(spec, Paths(), progress=False)
    run_dir = Paths().run_dir("tiny", "mae-pretrain-xxs-p2-s0")
    assert metrics["tokens"] == 16 and metrics["recon_loss"] > 0 and metrics["steps"] == 16
    enc = torch.load(run_dir / "encoder.pt", weights_only=False)
    assert enc["spec_digest"] == spec.digest() and "pos_embed" in enc["encoder"]
    rec = np.load(run_dir / "reconstructions.npz")
    assert rec["masked"].shape == rec["reconstruction"].shape == rec["original"].shape == (8, 8, 8, 1)
    assert rec["mask"].shape == (8, 16) and rec["mask"].sum(1).tolist() == [12] * 8


def test_finetune_loads_exactly_the_pretrained_encoder(tiny_project):
    params = load_params(tiny_project)
    mae.run(_pre(tiny_project), Paths(), progress=False)
    spec = make_mae_spec(params, task="mae-finetune", size=None, patch=2, seed=0)
    encoder = torch.load(Paths().run_dir("tiny", "mae-pretrain-xxs-p2-s0") / "encoder.pt",
                         weights_only=False)["encoder"]
    manifest = {"image_size": 8, "channels": 1, "num_classes": 4}
    model = classify.build_model(spec, manifest)
    classify.load_pretrained_encoder(model, spec, Paths())
    state = model.state_dict()
    assert set(state) - set(encoder) == classify.HEAD_KEYS
    for k, v in encoder.items():
        assert torch.equal(state[k], v), k
    scratch = classify.build_model(make_mae_spec(params, task="mae-scratch", size=None, patch=2,
                                                 seed=0), manifest)
    assert not torch.equal(scratch.state_dict()["pos_embed"], encoder["pos_embed"])
    metrics = classify.run(spec, Paths(), progress=False)
    assert metrics["task"] == "mae-finetune" and metrics["run_id"] == "mae-finetune-xxs-p2-s0"


def test_linprobe_trains_only_the_head(tiny_project):
    params = load_params(tiny_project)
    mae.run(_pre(tiny_project, patch=4), Paths(), progress=False)
    spec = make_mae_spec(params, task="mae-linprobe", size=None, patch=4, seed=0)
    classify.run(spec, Paths(), progress=False)
    encoder = torch.load(Paths().run_dir("tiny", "mae-pretrain-xxs-p4-s0") / "encoder.pt",
                         weights_only=False)["encoder"]
    trained = torch.load(Paths().run_dir("tiny", spec.run_id) / CKPT_NAME, weights_only=True)["modules"]["model"]
    for k, v in encoder.items():
        assert torch.equal(trained[k], v), k  # frozen
    assert trained["head.weight"].abs().sum() > 0


def test_finetune_without_pretraining_is_one_line_error(tiny_project):
    spec = make_mae_spec(load_params(tiny_project), task="mae-finetune", size=None, patch=2, seed=0)
    with pytest.raises(UserError, match="pre-trained encoder not found"):
        classify.run(spec, Paths(), progress=False)


def test_single_token_patch_is_refused(tiny_project):
    with pytest.raises(UserError, match="single token"):
        _pre(tiny_project, patch=8)


def test_pretrain_resume_is_bitwise(tiny_project, monkeypatch):
    spec = _pre(tiny_project, patch=2, seed=4).model_copy(
        update={"pretrain": _pre(tiny_project).pretrain.model_copy(update={"checkpoint_every_s": 1e-6})})
    paths = Paths()
    mae.run(spec, paths, progress=False)
    run_dir = paths.run_dir("tiny", spec.run_id)
    reference = torch.load(run_dir / CKPT_NAME, weights_only=True)["modules"]["model"]
    import shutil

    shutil.rmtree(run_dir)
    real, saves = runner.save_checkpoint, []

    def save_then_die(path, state):
        real(path, state)
        saves.append(1)
        if len(saves) == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        mae.run(spec, paths, progress=False)
    monkeypatch.setattr(runner, "save_checkpoint", real)
    mae.run(spec, paths, progress=False)
    resumed = torch.load(run_dir / CKPT_NAME, weights_only=True)["modules"]["model"]
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_report_mae_section(tiny_project):
    from pixbench.report import build_report

    params = load_params(tiny_project)
    mae.run(_pre(tiny_project, patch=4), Paths(), progress=False)
    tops = {}
    for task in ("mae-finetune", "mae-linprobe", "mae-scratch"):
        spec = make_mae_spec(params, task=task, size=None, patch=4, seed=0)
        tops[task] = classify.run(spec, Paths(), progress=False)["top1"]
    text = build_report(params, Paths(), TASKS).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ViT-XXS/4 | `pix` | 4 |"))
    assert f"{tops['mae-scratch']:.2f} (n=1)" in row and f"{tops['mae-linprobe']:.2f} (n=1)" in row
    assert f"{tops['mae-finetune'] - tops['mae-scratch']:+.2f} pt" in row
    assert (Paths().reports_dir / "figures" / "mae_tiny_reconstructions.png").is_file()
    assert (Paths().reports_dir / "figures" / "mae_tiny_top1_vs_total_gflops.png").is_file()
    # the paper's MAE table is about CIFAR-100, not this profile's (Fashion-MNIST-like) data
    assert "| S | 87.4 | 87.7 | [S] |" not in text and "MAE numbers are on CIFAR-100" in text


def test_alternative_target_runs_beside_the_default(tiny_project):
    params = load_params(tiny_project)
    alt = make_pretrain_spec(params, size=None, patch=4, seed=0, target="norm_pix")
    assert alt.run_id == "mae-pretrain-xxs-p4-s0-norm_pix" and alt.pretrain.target == "norm_pix"
    assert make_pretrain_spec(params, size=None, patch=4, seed=0, target="pix").variant is None
    mae.run(alt, Paths(), progress=False)
    ft = make_mae_spec(params, task="mae-finetune", size=None, patch=4, seed=0, target="norm_pix")
    assert ft.init["run_id"] == alt.run_id and ft.run_id.endswith("-norm_pix")
    assert classify.run(ft, Paths(), progress=False)["top1"] > 0
    with pytest.raises(UserError, match="--target must be"):
        make_pretrain_spec(params, size=None, patch=4, seed=0, target="lpips")
