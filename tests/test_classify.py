"""The classification task end to end on the tiny synthetic cache."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.errors import UserError
from pixbench.runio import CKPT_NAME
from pixbench.tasks import runner
from pixbench.data.subsets import balanced_subset
from pixbench.tasks.classify import run as classify
from pixbench.tasks.classify.engine import use_bf16
from pixbench.tasks.optim import lr_at


def _spec(params_path, patch=4, seed=0, **classify_overrides):
    params = load_params(params_path)
    if classify_overrides:
        prof = params.active
        new_cls = prof.classify.model_copy(update=classify_overrides)
        params = params.model_copy(update={"profiles": {
            params.profile: prof.model_copy(update={"classify": new_cls})}})
    return make_classify_spec(params, size="xxs", patch=patch, seed=seed)


def _weights(paths: Paths, spec) -> dict[str, torch.Tensor]:
    ckpt = torch.load(paths.run_dir(spec.profile, spec.run_id) / CKPT_NAME, weights_only=True)
    return ckpt["modules"]["model"]


def test_run_writes_self_describing_run_dir(tiny_project):
    spec = _spec(tiny_project, patch=2)
    paths = Paths()
    metrics = classify.run(spec, paths, progress=False)
    run_dir = paths.run_dir("tiny", "classify-xxs-p2-s0")
    for name in ("spec.json", "manifest.json", "metrics.json", "curve.json", CKPT_NAME):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"git_sha", "git_dirty", "versions", "device", "seed"} <= set(manifest)
    assert manifest["seed"] == 0 and manifest["versions"]["torch"] == torch.__version__
    assert metrics["tokens"] == 16 and metrics["patch"] == 2 and metrics["val_n"] == 64
    assert metrics["top1"] > 40.0  # 4 classes: chance is 25%
    assert 0 < metrics["top1"] <= metrics["top5"] <= 100
    assert metrics["train_img_per_s"] > 0 and metrics["infer_img_per_s"] > 0
    assert metrics["gflops_train"] == pytest.approx(3 * metrics["gflops_infer"])
    assert metrics["steps"] == 2 * (256 // 32)
    curve = json.loads((run_dir / "curve.json").read_text())
    assert [c["step"] for c in curve] == [5, 8, 10, 15, 16]  # every 5 steps + epoch ends
    assert curve[-1]["epoch"] == 2.0


def test_finished_run_is_reused_not_retrained(tiny_project, monkeypatch):
    spec = _spec(tiny_project, patch=8)
    first = classify.run(spec, Paths(), progress=False)
    monkeypatch.setattr(classify.Cell, "step", lambda *a, **k: pytest.fail("retrained"))
    assert classify.run(spec, Paths(), progress=False) == first


def test_resume_after_kill_is_bitwise_identical(tiny_project, monkeypatch, tmp_path):
    """Kill mid-epoch right after a checkpoint write, run again, compare with an unbroken run."""
    spec = _spec(tiny_project, patch=2, seed=3, checkpoint_every_s=1e-6)  # save every step
    paths = Paths()
    classify.run(spec, paths, progress=False)
    reference = _weights(paths, spec)
    run_dir = paths.run_dir(spec.profile, spec.run_id)
    shutil.rmtree(run_dir)

    real_save, saves = runner.save_checkpoint, []

    def save_then_die(path, state):
        real_save(path, state)
        saves.append(state["state"]["global_step"])
        if len(saves) == 5:  # mid-epoch 1 (8 steps per epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        classify.run(spec, paths, progress=False)
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(runner, "save_checkpoint", real_save)
    classify.run(spec, paths, progress=False)
    resumed = _weights(paths, spec)
    assert saves[-1] == 5
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_changed_spec_refuses_to_resume(tiny_project):
    paths = Paths()
    classify.run(_spec(tiny_project, patch=4), paths, progress=False)
    changed = _spec(tiny_project, patch=4, epochs=3)
    with pytest.raises(UserError, match=r"another spec \(classify.epochs: 2 -> 3\)"):
        classify.run(changed, paths, progress=False)
    metrics = classify.run(changed, paths, stale="restart", progress=False)
    assert metrics["epochs"] == 3


def test_foreign_checkpoint_is_one_line_error(tiny_project):
    spec = _spec(tiny_project, patch=4)
    paths = Paths()
    classify.run(spec, paths, progress=False)
    run_dir = paths.run_dir(spec.profile, spec.run_id)
    (run_dir / "metrics.json").unlink()
    ckpt = torch.load(run_dir / CKPT_NAME, weights_only=True)
    ckpt["spec_digest"] = "0" * 16
    torch.save(ckpt, run_dir / CKPT_NAME)
    with pytest.raises(UserError, match="checkpoint was written for another spec"):
        classify.run(spec, paths, progress=False)
    (run_dir / CKPT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable checkpoint"):
        classify.run(spec, paths, progress=False)


def test_seeds_differ_and_repeat(tiny_project):
    paths = Paths()
    a = classify.run(_spec(tiny_project, patch=4, seed=0), paths, progress=False)
    b = classify.run(_spec(tiny_project, patch=4, seed=1), paths, progress=False)
    assert a["loss"] != b["loss"]
    shutil.rmtree(paths.run_dir("tiny", "classify-xxs-p4-s0"))
    again = classify.run(_spec(tiny_project, patch=4, seed=0), paths, progress=False)
    assert again["loss"] == a["loss"] and again["top1"] == a["top1"]


def test_lr_schedule_warmup_then_cosine():
    peak = 1.0
    lrs = [lr_at(s, 100, 10, peak, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_balanced_subset_is_fixed_and_balanced():
    import numpy as np

    labels = np.repeat(np.arange(4), 50)
    a = balanced_subset(labels, 40, 4)
    assert np.array_equal(a, balanced_subset(labels, 40, 4))
    assert np.bincount(labels[a]).tolist() == [10, 10, 10, 10]


def test_bf16_autocast_trains_like_fp32(tiny_project):
    """bf16 is chosen only where it pays (width >= 192 on CPU); check it does not cost accuracy."""
    fp32 = classify.run(_spec(tiny_project, patch=4, seed=5), Paths(), progress=False)
    bf16 = classify.run(_spec(tiny_project, patch=4, seed=5, precision="bf16", epochs=2,
                              curve_every_steps=None, checkpoint_every_s=59.0), Paths(),
                        stale="restart", progress=False)
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert abs(bf16["top1"] - fp32["top1"]) <= 10.0 and bf16["top1"] > 40.0


def test_auto_precision_uses_bf16_only_where_it_pays(tiny_project):
    cfg = _spec(tiny_project).classify.model_copy(update={"precision": "auto"})
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not use_bf16(cfg.precision, "xxs", cpu) and use_bf16(cfg.precision, "t", cpu)
    assert use_bf16(cfg.precision, "xxs", gpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_uses_bf16_and_allocator_memory(tiny_project):
    metrics = classify.run(_spec(tiny_project, patch=2, precision="auto"), Paths(),
                           device="cuda", progress=False)
    assert metrics["device"] == "cuda" and metrics["precision"] == "bf16"
    assert metrics["peak_mem_kind"] == "cuda_max_allocated" and metrics["peak_mem_mb"] > 0
