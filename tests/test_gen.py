"""The generation track end to end at test scale: FID classifier, tokenizer, DiT training
(with the FID-vs-step probe), kill + resume of every training task, seeded sampling, metrics
with their suffixes."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from ckpt_util import tensors
import torch

from pixbench.config import (Paths, load_params, make_dit_eval_spec, make_dit_spec,
                             make_encode_spec, make_featnet_spec, make_vq_eval_spec, make_vq_spec)
from pixbench.errors import UserError

TIME_KEYS = {"train_s", "wall_s", "train_img_per_s", "train_time_s", "encode_s"}


@contextlib.contextmanager
def kill_after(monkeypatch, step: int):
    """A context in which a run is killed right after its checkpoint at `step`: Run.tick saves
    and raises, as SIGKILL after a checkpoint would leave the run dir."""
    from pixbench.tasks.runner import Run

    real = Run.tick

    def tick(self, state):
        if state.global_step == step:
            self.save(state)
            raise KeyboardInterrupt
        real(self, state)

    with monkeypatch.context() as m:
        m.setattr(Run, "tick", tick)
        yield


def untimed(obj):
    """A metrics dict or curve without its wall-clock fields (the only ones a resume changes)."""
    if isinstance(obj, list):
        return [untimed(o) for o in obj]
    return {k: v for k, v in obj.items() if k not in TIME_KEYS}


def killed_and_resumed(monkeypatch, run, spec, paths, step: int) -> tuple[dict, dict]:
    """(uninterrupted metrics, resumed metrics): run, drop the run dir, run again killed after
    the checkpoint at `step`, then resume with a fresh call. The uninterrupted run dir is kept
    as `<run dir>.full` for weight comparisons."""
    import shutil

    run_dir = paths.run_dir(spec.profile, spec.run_id)
    full = run(spec, paths, progress=False)
    shutil.rmtree(run_dir.with_name(run_dir.name + ".full"), ignore_errors=True)
    run_dir.rename(run_dir.with_name(run_dir.name + ".full"))
    with kill_after(monkeypatch, step), pytest.raises(KeyboardInterrupt):
        run(spec, paths, progress=False)
    assert (run_dir / "ckpt" / "last.pt").exists() and not (run_dir / "metrics.json").exists()
    resumed = run(spec, paths, progress=False)
    curves = [json.loads((d / "curve.json").read_text())
              for d in (run_dir.with_name(run_dir.name + ".full"), run_dir)]
    assert untimed(curves[0]) == untimed(curves[1])
    assert untimed(full) == untimed(resumed)
    return full, resumed


@pytest.fixture
def gen_ready(gen_project):
    """Tokenizer, latents and FID classifier trained on the tiny gen cache."""
    from pixbench.tasks.gen import featnet, latents, vq

    params = load_params(gen_project)
    paths = Paths()
    vq.run(make_vq_spec(params), paths, progress=False)
    latents.run_encode(make_encode_spec(params), paths, progress=False)
    featnet.run(make_featnet_spec(params), paths, progress=False)
    return params


def test_vq_eval_reports_reconstruction_and_sanity(gen_ready) -> None:
    from pixbench.tasks.gen.latents import run_eval

    m = run_eval(make_vq_eval_spec(gen_ready), Paths(), progress=False)
    assert 0 < m["psnr"] < 100 and 0 <= m["l1"] <= 2
    assert 0 < m["codebook_usage"] <= 1 and 1 <= m["perplexity"] <= m["codebook_size"]
    # the sanity scale: real images are far closer to the reference than noise
    assert m["fid_featnet_real_val"] < m["fid_featnet_noise"]
    rec = np.load(Paths().run_dir("tiny", m["run_id"]) / "reconstructions.npz")
    assert rec["original"].shape == rec["reconstruction"].shape


def test_dit_train_eval_and_seeded_sampling(gen_ready) -> None:
    from pixbench.tasks.gen import dit, dit_eval, sampling

    paths = Paths()
    spec = make_dit_spec(gen_ready, size=None, patch=1, seed=0)
    m = dit.run(spec, paths, progress=False)
    assert m["tokens"] == 16 and m["steps"] == 6 and np.isfinite(m["train_loss"])
    curve = json.loads((paths.run_dir("tiny", spec.run_id) / "curve.json").read_text())
    assert [r["step"] for r in curve] == [3, 6] and all("fid_featnet" in r for r in curve)
    ev = dit_eval.run_eval(make_dit_eval_spec(gen_ready, size=None, patch=1, seed=0), paths,
                           progress=False)
    for key in ("fid_featnet", "isc_featnet_mean", "kid_featnet_mean", "precision_featnet",
                "recall_featnet"):
        assert np.isfinite(ev[key]), key
    assert not any(k.endswith("_inception") for k in ev)  # no weights here: never mixed
    samples = np.load(paths.run_dir("tiny", ev["run_id"]) / "samples.npz")
    assert samples["images"].shape == (32, 1, 16, 16) and samples["images"].dtype == np.uint8
    # sampling is a function of the seed
    fs = make_featnet_spec(gen_ready)
    ctx = sampling.sampling_context(paths, "tiny", tokenizer=spec.tokenizer,
                                    featnet={"run_id": fs.run_id, "digest": fs.digest()},
                                    sample=gen_ready.active.gen.sample, fid=gen_ready.active.gen.fid)
    model = sampling.load_ema(paths, "tiny", {"run_id": spec.run_id, "digest": spec.digest()})
    a, _ = sampling.draw_samples(model, ctx, n=8, seed=3)
    b, _ = sampling.draw_samples(model, ctx, n=8, seed=3)
    c, _ = sampling.draw_samples(model, ctx, n=8, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # chunk b's noise is (seed, b): the eval's first chunk (16 of 32, seed 0) is a 16-sample draw
    first, _ = sampling.draw_samples(model, ctx, n=16, seed=0)
    assert torch.equal(first, torch.from_numpy(samples["images"][:16]))


def test_dit_resume_ends_where_an_uninterrupted_run_does(gen_ready, monkeypatch) -> None:
    """Killed mid-interval (step 4 of 6, curve points at 3 and 6): the loss sums of steps 4..6
    come back from the checkpoint, so train_loss, the curve and the weights are identical."""
    from pixbench.tasks.gen import dit

    paths = Paths()
    spec = make_dit_spec(gen_ready, size=None, patch=2, seed=0)
    killed_and_resumed(monkeypatch, dit.run, spec, paths, step=4)
    run_dir = paths.run_dir("tiny", spec.run_id)
    for name in ("ema.pt", "ckpt/last.pt"):
        full = torch.load(run_dir.with_name(run_dir.name + ".full") / name, weights_only=True)
        resumed = torch.load(run_dir / name, weights_only=True)
        for a, b in zip(tensors(full), tensors(resumed)):
            assert torch.equal(a, b)


def test_vq_resume_is_bitwise(gen_project, monkeypatch) -> None:
    """Killed at step 5 of 8: the curve window (steps 1-5), restart count and code ages come
    back, so the tokenizer, the discriminator, the curve and final_l1 are identical."""
    from pixbench.tasks.gen import vq

    paths = Paths()
    spec = make_vq_spec(load_params(gen_project))
    full, _ = killed_and_resumed(monkeypatch, vq.run, spec, paths, step=5)
    assert full["steps"] == 8 and full["code_restarts"] > 0  # restarts are exercised
    run_dir = paths.run_dir("tiny", spec.run_id)
    weights = "tokenizer/diffusion_pytorch_model.safetensors"
    full_dir = run_dir.with_name(run_dir.name + ".full")
    assert (run_dir / weights).read_bytes() == (full_dir / weights).read_bytes()
    a, b = (torch.load(d / "ckpt/last.pt", weights_only=True)
            for d in (run_dir.with_name(run_dir.name + ".full"), run_dir))
    for x, y in zip(tensors(a), tensors(b)):
        assert torch.equal(x, y)


def test_featnet_resume_mid_epoch_is_bitwise(gen_project, monkeypatch) -> None:
    """2 epochs of 4 steps, killed at step 6 (epoch 2, step 2): the epoch's batch order is
    replayed from the seed, so weights, curve and val_top1 are identical."""
    import yaml

    from pixbench.tasks.gen import featnet

    raw = yaml.safe_load(gen_project.read_text())
    raw["profiles"]["tiny"]["gen"]["featnet"]["epochs"] = 2
    gen_project.write_text(yaml.safe_dump(raw))
    paths = Paths()
    spec = make_featnet_spec(load_params(gen_project))
    full, _ = killed_and_resumed(monkeypatch, featnet.run, spec, paths, step=6)
    assert full["steps"] == 8
    run_dir = paths.run_dir("tiny", spec.run_id)
    a, b = (torch.load(d / featnet.WEIGHTS_FILE, weights_only=True)["state_dict"]
            for d in (run_dir.with_name(run_dir.name + ".full"), run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dit_eval_without_training_is_a_clear_error(gen_ready) -> None:
    from pixbench.tasks.gen import dit_eval

    with pytest.raises(UserError, match="ema.pt not found"):
        dit_eval.run_eval(make_dit_eval_spec(gen_ready, size=None, patch=1, seed=0), Paths(),
                          progress=False)


def test_dit_spec_rejects_bad_patch(gen_ready) -> None:
    with pytest.raises(UserError, match="does not divide the 4x4 latent grid"):
        make_dit_spec(gen_ready, size=None, patch=3, seed=0)
    with pytest.raises(UserError, match="not a DiT size"):
        make_dit_spec(gen_ready, size="huge", patch=1, seed=0)


def test_dit_sample_cli_writes_a_grid(gen_ready, gen_project, monkeypatch, capsys) -> None:
    from pixbench import cli
    from pixbench.tasks.gen import dit

    dit.run(make_dit_spec(gen_ready, size=None, patch=2, seed=0), Paths(), progress=False)
    out = gen_project.parent / "grid.png"
    monkeypatch.setattr("sys.argv", ["pixbench", "dit", "sample", "--patch", "2", "-n", "8",
                                     "--out", str(out), "--params", str(gen_project)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_pretrained_diffusers_tokenizer_is_imported(gen_project) -> None:
    import yaml

    from pixbench.models.vqgan import build_vqmodel
    from pixbench.tasks.gen import vq
    from pixbench.tasks.gen.tokenizer import load_tokenizer

    torch.manual_seed(3)
    src = build_vqmodel(in_channels=1, downsample=4, base_channels=8, layers_per_block=1,
                        mid_attention=False, latent_channels=4, codebook_size=16,
                        commitment=0.25, sample_size=16)
    folder = gen_project.parent / "pretrained-vq"
    src.save_pretrained(folder)
    raw = yaml.safe_load(gen_project.read_text())
    raw["profiles"]["tiny"]["gen"]["vq"]["pretrained"] = {"path": str(folder), "format": "diffusers",
                                                     "root": "data", "sha256": None}
    gen_project.write_text(yaml.safe_dump(raw))
    spec = make_vq_spec(load_params(gen_project))
    m = vq.run(spec, Paths(), progress=False)
    assert m["pretrained"] and m["steps"] == 0
    loaded = load_tokenizer(Paths().run_dir("tiny", spec.run_id) / "tokenizer", spec.digest())
    for a, b in zip(src.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    raw["profiles"]["tiny"]["gen"]["vq"]["latent_channels"] = 3  # params disagree with the file
    gen_project.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="latent_channels"):
        vq.run(make_vq_spec(load_params(gen_project)), Paths(), stale="restart", progress=False)


def test_dit_trains_in_the_recipes_precision(gen_ready) -> None:
    """dit.precision is honoured: bf16 autocast when asked (a finite loss, recorded in the
    metrics), fp32 for `auto` on the CPU at DiT-XXS width; bf16 on CUDA."""
    from pixbench.tasks.gen import dit

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not dit.use_bf16("auto", "xxs", cpu) and dit.use_bf16("auto", "s", cpu)
    assert dit.use_bf16("auto", "xxs", gpu) and not dit.use_bf16("fp32", "l", gpu)
    spec = make_dit_spec(gen_ready, size=None, patch=4, seed=3)
    bf16 = spec.model_copy(update={"dit": spec.dit.model_copy(update={"precision": "bf16"})})
    m = dit.run(bf16, Paths(), progress=False)
    assert m["precision"] == "bf16" and np.isfinite(m["train_loss"])
    assert dit.run(spec, Paths(), stale="restart", progress=False)["precision"] == "fp32"
