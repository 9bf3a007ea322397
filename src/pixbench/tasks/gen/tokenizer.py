"""Tokenizer files: save / load the diffusers VQModel folder with a guard, import pretrained
tokenizers (diffusers folders, taming/LDM checkpoints), and encoding / decoding in fixed chunks
(sharded across ranks by `parallel.chunked`).

A saved folder holds diffusers' config.json + weights and `pixbench.json` (the spec digest and
the sha256 of the weights file), so a corrupt or swapped file is a one-line error.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from pixbench.config import Paths, PretrainedTokenizer, VQConfig
from pixbench.data.cache import sha256_file
from pixbench.errors import UserError
from pixbench.runio import atomic_write_json, read_json
from pixbench.tasks.gen.data import to_uint8, to_unit
from pixbench.tasks.gen.instruments import check_pinned, locate
from pixbench.tasks.gen.parallel import chunked

TOKENIZER_DIR = "tokenizer"  # the diffusers folder inside a `vq train` run dir
GUARD = "pixbench.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
CHUNK = 256  # images per encode/decode batch: fixed, so re-encoding reproduces the cache bit for bit


def save_tokenizer(model, out_dir: Path, spec) -> None:
    """save_pretrained into a temp folder, add the guard, swap it in: never half-written."""
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(tmp / GUARD, {
            "spec_digest": spec.digest(), "run_id": spec.run_id,
            "weights_sha256": sha256_file(tmp / WEIGHTS),
            "commitment": spec.vq.commitment})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_tokenizer(folder: Path, expect_digest: str | None = None):
    """A saved tokenizer in eval mode; missing, corrupt or mismatched files are UserErrors."""
    from diffusers import VQModel

    from pixbench.models.vqgan import configure_quantizer

    folder = Path(folder)
    guard = folder / GUARD
    if not guard.is_file():
        raise UserError(f"tokenizer not found: {guard} (run `pixbench vq train`)")
    meta = read_json(guard, "tokenizer guard")
    if expect_digest is not None and meta.get("spec_digest") != expect_digest:
        raise UserError(f"{folder}: tokenizer was trained for another spec "
                        f"({meta.get('spec_digest')} != {expect_digest}); re-run `pixbench vq train`")
    weights = folder / WEIGHTS
    if not weights.is_file() or sha256_file(weights) != meta.get("weights_sha256"):
        raise UserError(f"{weights}: missing or sha256 does not match {guard} (corrupt tokenizer)")
    try:
        model = VQModel.from_pretrained(folder)
    except Exception as exc:  # diffusers raises many kinds for bad configs and weights
        raise UserError(f"{folder}: unreadable tokenizer ({str(exc).splitlines()[0][:120]})") from None
    configure_quantizer(model, meta.get("commitment", 0.25))
    return model.eval()


def import_pretrained(pre: PretrainedTokenizer, paths: Paths, cfg: VQConfig, channels: int):
    """A pretrained tokenizer from a diffusers folder or a taming/LDM checkpoint."""
    from diffusers import VQModel

    from pixbench.models.vqgan import configure_quantizer

    src = locate(pre, paths, "vq.pretrained")
    check_pinned(pre, src, "vq.pretrained")
    try:
        if pre.format == "diffusers":
            model = VQModel.from_pretrained(src)
        else:
            from pixbench.models.taming import vqmodel_from_taming

            model = vqmodel_from_taming(src)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{src}: unreadable {pre.format} tokenizer "
                        f"({str(exc).splitlines()[0][:120]})") from None
    got = (model.config.in_channels, len(model.config.block_out_channels),
           model.config.latent_channels)
    want = (channels, cfg.levels, cfg.latent_channels)
    if got != want:
        raise UserError(f"{src}: tokenizer has (in_channels, levels, latent_channels) {got}, "
                        f"params ask for {want} (vq.downsample, vq.latent_channels)")
    configure_quantizer(model, cfg.commitment)
    return model.eval()


@torch.no_grad()
def encode_chunk(model, images: np.ndarray, device: torch.device | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, H, W, C) -> pre-quantisation latents (n, c, h, w) float32 and codes (n, h, w)
    int32, on the CPU."""
    z = model.encode(to_unit(images).to(device or model.device)).latents  # (n, c, h, w)
    _, _, (_, _, idx) = model.quantize(z)  # idx (n*h*w,)
    codes = idx.view(z.shape[0], z.shape[2], z.shape[3]).to(torch.int32)  # (n, h, w)
    return z.float().cpu(), codes.cpu()


def encode_images(model, images: np.ndarray, batch: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) -> latents (N, c, h, w) float32 and codes (N, h, w), one process."""
    parts = [encode_chunk(model, images[i:i + batch]) for i in range(0, images.shape[0], batch)]
    return (torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy())


def latent_geometry(model) -> tuple[int, int]:
    """(latent channels, down-sampling factor) of a VQModel."""
    return model.config.latent_channels, 2 ** (len(model.config.block_out_channels) - 1)


def encode_sharded(model, images: np.ndarray, device: torch.device, decode: bool = False,
                   main_only: bool = False) -> tuple[torch.Tensor, ...]:
    """Every rank encodes its chunks of uint8 (N, H, W, C) images; all ranks get (latents
    (N, c, h, w), codes (N, h, w)), plus the uint8 reconstructions (N, C, H, W) with `decode`;
    with `main_only` only rank 0 gets all N rows (the others keep their own): for results
    only rank 0 scores. Chunks are CHUNK images whatever the world size, so the rows equal
    `encode_images`'."""
    n, size, _, chans = images.shape
    c, f = latent_geometry(model)

    def one(b: int, start: int, stop: int) -> tuple[torch.Tensor, ...]:
        lat, codes = encode_chunk(model, np.asarray(images[start:stop]), device)
        if not decode:
            return lat, codes
        return lat, codes, decode_latents(model, lat.to(device), batch=CHUNK)

    empty = (torch.zeros(0, c, size // f, size // f), torch.zeros(0, size // f, size // f,
                                                                dtype=torch.int32),
             torch.zeros(0, chans, size, size, dtype=torch.uint8))
    return chunked(n, CHUNK, one, empty if decode else empty[:2], main_only=main_only)


@torch.no_grad()
def decode_latents(model, latents: torch.Tensor, batch: int = CHUNK) -> torch.Tensor:
    """Latents (N, c, h, w) -> uint8 images (N, C, H, W) on the CPU; the decoder quantises
    first."""
    out = [to_uint8(model.decode(latents[i:i + batch]).sample).cpu()
           for i in range(0, latents.shape[0], batch)]
    return torch.cat(out)
