"""The generation track end to end at test scale: FID classifier, tokenizer, DiT training
(with the FID-vs-step probe), resume, seeded sampling, metrics with their suffixes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixbench.config import Paths, load_params
from pixbench.errors import UserError
from pixbench.genconfig import (make_dit_eval_spec, make_dit_spec, make_encode_spec,
                                make_featnet_spec, make_vq_eval_spec, make_vq_spec)


@pytest.fixture
def gen_ready(gen_project):
    """Tokenizer, latents and FID classifier trained on the tiny gen cache."""
    from pixbench.tasks import featnet, latents, vq

    params = load_params(gen_project)
    paths = Paths()
    vq.run(make_vq_spec(params), paths, progress=False)
    latents.run_encode(make_encode_spec(params), paths, progress=False)
    featnet.run(make_featnet_spec(params), paths, progress=False)
    return params


def test_vq_eval_reports_reconstruction_and_sanity(gen_ready) -> None:
    from pixbench.tasks.latents import run_eval

    m = run_eval(make_vq_eval_spec(gen_ready), Paths(), progress=False)
    assert 0 < m["psnr"] < 100 and 0 <= m["l1"] <= 2
    assert 0 < m["codebook_usage"] <= 1 and 1 <= m["perplexity"] <= m["codebook_size"]
    # the sanity scale: real images are far closer to the reference than noise
    assert m["fid_featnet_real_val"] < m["fid_featnet_noise"]
    rec = np.load(Paths().run_dir("tiny", m["run_id"]) / "reconstructions.npz")
    assert rec["original"].shape == rec["reconstruction"].shape


def test_dit_train_eval_and_seeded_sampling(gen_ready) -> None:
    from pixbench.tasks import dit, dit_eval

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
    ctx = dit_eval.sampling_context(paths, "tiny", tokenizer=spec.tokenizer,
                                    featnet={"run_id": fs.run_id, "digest": fs.digest()},
                                    sample=gen_ready.active.gen.sample, fid=gen_ready.active.gen.fid)
    model = dit_eval.load_ema(paths, "tiny", {"run_id": spec.run_id, "digest": spec.digest()})
    a, _ = dit_eval.draw_samples(model, ctx, n=8, seed=3)
    b, _ = dit_eval.draw_samples(model, ctx, n=8, seed=3)
    c, _ = dit_eval.draw_samples(model, ctx, n=8, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dit_resume_ends_where_an_uninterrupted_run_does(gen_ready, monkeypatch) -> None:
    from pixbench.tasks import dit

    paths = Paths()
    spec = make_dit_spec(gen_ready, size=None, patch=2, seed=0)
    dit.run(spec, paths, progress=False)
    full = torch.load(paths.run_dir("tiny", spec.run_id) / "ema.pt", weights_only=False)["ema"]
    # kill after the first curve point (step 3): keep the checkpoint, drop the finished files
    import shutil

    run_dir = paths.run_dir("tiny", spec.run_id)
    shutil.rmtree(run_dir)
    calls = {"n": 0}
    real = dit.train_steps

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dit, "train_steps", dying)
    with pytest.raises(KeyboardInterrupt):
        dit.run(spec, paths, progress=False)
    assert (run_dir / "ckpt" / "last.pt").exists() and not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(dit, "train_steps", real)
    dit.run(spec, paths, progress=False)
    resumed = torch.load(run_dir / "ema.pt", weights_only=False)["ema"]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_dit_eval_without_training_is_a_clear_error(gen_ready) -> None:
    from pixbench.tasks import dit_eval

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
    from pixbench.tasks import dit

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
    from pixbench.tasks import vq
    from pixbench.tasks.tokenizer import load_tokenizer

    torch.manual_seed(3)
    src = build_vqmodel(in_channels=1, downsample=4, base_channels=8, layers_per_block=1,
                        mid_attention=False, latent_channels=4, codebook_size=16,
                        commitment=0.25, sample_size=16)
    folder = gen_project.parent / "pretrained-vq"
    src.save_pretrained(folder)
    raw = yaml.safe_load(gen_project.read_text())
    raw["profiles"]["tiny"]["gen"]["vq"]["pretrained"] = {"path": str(folder), "format": "diffusers"}
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
