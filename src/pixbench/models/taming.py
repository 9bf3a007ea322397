"""Import a taming-transformers / LDM VQGAN checkpoint (`encoder.down.0.block.0...`, a `.ckpt`
with a `state_dict`) as a diffusers VQModel.

The encoder/decoder key mapping is diffusers' own (`convert_ldm_vae_checkpoint`, the LDM VAE
layout, which taming's VQGAN shares); the quantiser and the 1x1 convs keep their names. The
architecture is read from the tensors' shapes, so no YAML config is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pixbench.errors import UserError


def _strip_prefix(sd: dict) -> dict:
    """LDM checkpoints nest the autoencoder under `first_stage_model.`."""
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def taming_config(sd: dict) -> dict:
    """VQModel kwargs from a taming state dict's shapes."""
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    if not levels or "quantize.embedding.weight" not in sd:
        raise ValueError("no encoder.down.* or quantize.embedding.weight keys: not a taming VQGAN")
    channels = tuple(int(sd[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels)
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    n_codes, embed_dim = sd["quantize.embedding.weight"].shape
    return {"in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
            "down_block_types": ("DownEncoderBlock2D",) * len(levels),
            "up_block_types": ("UpDecoderBlock2D",) * len(levels),
            "block_out_channels": channels, "layers_per_block": len(blocks),
            "latent_channels": int(sd["encoder.conv_out.weight"].shape[0]),
            "num_vq_embeddings": int(n_codes), "vq_embed_dim": int(embed_dim),
            "norm_num_groups": 32,  # taming's Normalize(): GroupNorm(32)
            "mid_block_add_attention": any(k.startswith("encoder.mid.attn_1") for k in sd)}


def vqmodel_from_taming(path: Path):
    """A diffusers VQModel holding a taming/LDM VQGAN checkpoint's weights."""
    from diffusers import VQModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from None
    sd = _strip_prefix(ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {})
    try:
        config = taming_config(sd)
    except (ValueError, KeyError) as exc:
        raise UserError(f"{path}: {exc}") from None
    model = VQModel(**config)
    converted = convert_ldm_vae_checkpoint(sd, config)
    for key in ("quantize.embedding.weight", "quant_conv.weight", "quant_conv.bias",
                "post_quant_conv.weight", "post_quant_conv.bias"):
        converted[key] = sd[key]
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing:
        raise UserError(f"{path}: {len(missing)} tokenizer weights missing after conversion "
                        f"(first: {missing[0]})")
    return model
