"""The VQGAN tokenizer: shapes, straight-through gradients, dead-code restarts, the saved
folder reproducing the cached latents bit for bit, and one-line errors for bad files (kill +
resume of `vq train` is in test_gen.py, with the other training tasks')."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pixbench.config import Paths, load_params, make_encode_spec, make_vq_spec
from pixbench.errors import UserError
from pixbench.models.vqgan import build_vqmodel, code_stats, restart_dead_codes, vq_forward


def tiny_vq(**kw):
    args = dict(in_channels=1, downsample=4, base_channels=8, layers_per_block=1,
                mid_attention=False, latent_channels=4, codebook_size=16, commitment=0.25,
                sample_size=16)
    return build_vqmodel(**{**args, **kw})


@pytest.mark.parametrize("downsample,side", [(2, 8), (4, 4), (8, 2)])
def test_encode_decode_shapes(downsample: int, side: int) -> None:
    torch.manual_seed(0)
    model = tiny_vq(downsample=downsample)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    rec, vq_loss, idx, z = vq_forward(model, x)
    assert z.shape == (3, 4, side, side)
    assert idx.shape == (3, side, side) and idx.max() < 16
    assert rec.shape == x.shape and vq_loss.ndim == 0


def test_straight_through_gradients_reach_the_encoder() -> None:
    torch.manual_seed(0)
    model = tiny_vq()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    rec, _, _, _ = vq_forward(model, x)
    (x - rec).abs().mean().backward()  # reconstruction loss only: no path but straight-through
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None  # codebook learns from the VQ loss only


def test_commitment_weight_is_on_the_encoder_term() -> None:
    model = tiny_vq(commitment=0.25)
    z = torch.randn(1, 4, 1, 1, requires_grad=True)  # one vector: one code, no cancellation
    zq, loss, _ = model.quantize(z)
    e = model.quantize.embedding.weight
    (gz,) = torch.autograd.grad(loss, z, retain_graph=True)
    (ge,) = torch.autograd.grad(loss, e)
    ratio = gz.abs().sum() / ge.abs().sum()  # d/dz: β(z - e); d/de: (e - z)
    assert ratio == pytest.approx(0.25, rel=1e-4)


def test_dead_codes_are_reseeded_from_encoder_outputs() -> None:
    codebook = torch.zeros(8, 4)
    last_used = torch.zeros(8, dtype=torch.long)
    z = torch.randn(2, 4, 2, 2)
    idx = torch.zeros(2, 2, 2, dtype=torch.long)  # only code 0 is used
    g = torch.Generator().manual_seed(0)
    assert restart_dead_codes(codebook, last_used, idx, z, step=2, patience=3, generator=g) == 0
    n = restart_dead_codes(codebook, last_used, idx, z, step=3, patience=3, generator=g)
    assert n == 7 and (last_used[1:] == 3).all()
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    for row in codebook[1:]:
        assert (flat == row).all(1).any()  # each restarted code is one of the batch's vectors


def test_code_stats() -> None:
    s = code_stats(torch.tensor([0, 0, 1, 1]), 4)
    assert s["codes_used"] == 2 and s["codebook_usage"] == 0.5
    assert s["perplexity"] == pytest.approx(2.0)


def _train_and_encode(params_path):
    from pixbench.tasks.gen import latents, vq

    params = load_params(params_path)
    spec = make_vq_spec(params)
    metrics = vq.run(spec, Paths(), progress=False)
    man = latents.run_encode(make_encode_spec(params), Paths(), progress=False)
    return spec, metrics, man


def test_train_encode_and_reload_bit_for_bit(gen_project) -> None:
    from pixbench.tasks.gen.data import gen_cache
    from pixbench.tasks.gen.latents import latents_dir, load_latents
    from pixbench.tasks.gen.tokenizer import encode_images, load_tokenizer

    spec, metrics, man = _train_and_encode(gen_project)
    assert metrics["steps"] == 8 and metrics["latent_side"] == 4
    assert man["latent_shape"] == [4, 4, 4] and man["scale_factor"] > 0
    paths = Paths()
    model = load_tokenizer(paths.run_dir("tiny", spec.run_id) / "tokenizer", spec.digest())
    ds = gen_cache(paths, "tiny", spec.data.model_dump())
    lat, codes = encode_images(model, np.asarray(ds.val_images))
    cached, labels, _ = load_latents(paths, "tiny", {"run_id": spec.run_id, "digest": spec.digest()}, "val")
    assert torch.equal(torch.from_numpy(lat), cached)  # bit for bit
    assert np.array_equal(np.load(latents_dir(paths, "tiny", spec.run_id) / "val_codes.npy"), codes)
    assert labels.shape[0] == lat.shape[0]


def test_corrupt_and_mismatched_tokenizer_files(gen_project) -> None:
    from pixbench.tasks.gen.tokenizer import WEIGHTS, load_tokenizer

    spec, _, _ = _train_and_encode(gen_project)
    folder = Paths().run_dir("tiny", spec.run_id) / "tokenizer"
    with pytest.raises(UserError, match="another spec"):
        load_tokenizer(folder, expect_digest="0" * 16)
    weights = folder / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt tokenizer") as exc:
        load_tokenizer(folder, spec.digest())
    assert "\n" not in str(exc.value) and str(weights) in str(exc.value)
    (folder / "pixbench.json").unlink()
    with pytest.raises(UserError, match="tokenizer not found"):
        load_tokenizer(folder)


def test_cli_encode_without_tokenizer_is_one_line(gen_project) -> None:
    out = subprocess.run([sys.executable, "-m", "pixbench.cli", "vq", "encode", "--params",
                          str(gen_project)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: tokenizer not found") and out.stderr.count("\n") == 1


def test_params_reject_a_latent_grid_the_patch_does_not_divide(gen_project) -> None:
    import yaml

    raw = yaml.safe_load(gen_project.read_text())
    raw["gen_sweep"]["patches"] = [3]
    gen_project.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="gen_sweep.patches"):
        load_params(gen_project)
    raw["gen_sweep"]["patches"] = [1]
    raw["profiles"]["tiny"]["gen"]["vq"]["downsample"] = 3
    gen_project.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="power of 2"):
        load_params(gen_project)
    assert json.dumps  # keep import used


def _to_taming_layout(sd: dict, levels: int) -> dict:
    """Rename a diffusers VQModel state dict to taming's layout (the inverse of the import)."""
    import re

    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in sd.items():
        n = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        n = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m.group(1)) + 1}", n)
        if "mid_block.attentions.0." in n:
            head, tail = n.split("mid_block.attentions.0.")
            name, param = tail.rsplit(".", 1)
            n = f"{head}mid.attn_1.{attn[name]}.{param}"
            v = v[..., None, None] if v.ndim == 2 else v  # taming's 1x1 convs
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", n)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", n)
        m = re.match(r"decoder\.up_blocks\.(\d+)\.(.*)", n)
        if m:
            rest = m.group(2).replace("resnets", "block").replace("upsamplers.0", "upsample")
            n = f"decoder.up.{levels - 1 - int(m.group(1))}.{rest}"
        out[n] = v
    return out


def test_taming_checkpoint_imports_with_identical_outputs(tmp_path) -> None:
    from pixbench.models.taming import vqmodel_from_taming

    from diffusers import VQModel

    torch.manual_seed(0)
    model = VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
                    layers_per_block=2, latent_channels=4, num_vq_embeddings=16,
                    norm_num_groups=32).eval()  # taming's GroupNorm(32)
    sd = _to_taming_layout(model.state_dict(), levels=3)
    assert any(k.startswith("encoder.down.0.block.0") for k in sd)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in sd.items()}}, path)
    loaded = vqmodel_from_taming(path).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x).sample, loaded(x).sample, atol=1e-5)
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, path)
    with pytest.raises(UserError, match="not a taming VQGAN"):
        vqmodel_from_taming(path)
