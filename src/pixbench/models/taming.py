"""Import a taming-transformers / LDM VQGAN checkpoint (`encoder.down.0.block.0...`, a `.ckpt`
with a `state_dict`) as a diffusers VQModel.

The encoder/decoder key mapping is diffusers' own (`convert_ldm_vae_checkpoint`, the LDM VAE
layout, which taming's VQGAN shares); the quantiser and the 1x1 convs keep their names. The
architecture is read from the tensors' shapes, so no YAML config is needed.

Reading never runs code from the file. A real taming/LDM `.ckpt` is a pytorch-lightning
checkpoint: beside `state_dict` it pickles training metadata (the `ModelCheckpoint` callback
class as a dict key, omegaconf hparams, numpy scalars) that a plain `weights_only=True` load
refuses. So the pickle's globals are listed first without unpickling (`pickle_globals`); each one
from a known metadata namespace (`METADATA`) is allowlisted for torch's `weights_only` unpickler
as an *inert stand-in* (`_Inert`: it stores its arguments and state and runs nothing, not the
named class); any other global is refused before torch.load is called; then only the tensors of
`state_dict` are kept. The metadata is never used, so standing it in loses nothing.
"""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

import torch

from pixbench.errors import UserError

# Namespaces of training metadata in lightning checkpoints, read as inert stand-ins (never
# imported, never called). `torch.*` and the builtins torch allows are left to torch's rules.
METADATA = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "numpy.",
            "pathlib.", "argparse.Namespace", "collections.defaultdict")
TORCH_ALLOWED = ("torch.", "collections.OrderedDict", "collections.Counter", "_codecs.encode",
                 "builtins.bytearray", "builtins.set", "builtins.complex")


class _Inert:
    """A stand-in for a metadata class or function named in a checkpoint: calling it,
    instantiating it or setting its state only records what it was given."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:  # a stood-in mapping (defaultdict, ...)
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, item) -> None:  # a stood-in sequence
        self.__dict__.setdefault("list", []).append(item)

    def extend(self, items) -> None:
        self.__dict__.setdefault("list", []).extend(items)


def _stand_in(name: str) -> type:
    return type(f"Inert[{name}]", (_Inert,), {"__module__": __name__})


def _scan(stream) -> set[str]:
    """The GLOBALs of one pickle (read up to its STOP, nothing executed)."""
    out = set()
    for op, arg, _ in pickletools.genops(stream):
        if op.name in ("GLOBAL", "INST"):
            out.add(".".join(str(arg).split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            out.add("<STACK_GLOBAL>")  # names computed at load time: never allowlisted
    return out


def pickle_globals(path: Path) -> set[str]:
    """Every class or function the checkpoint's pickle names, without unpickling it: the
    zip format's data.pkl, or the legacy format's object pickle (the 4th in the stream)."""
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            with zipfile.ZipFile(f) as z:
                name = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
                if name is None:
                    raise ValueError("zip without data.pkl")
                with z.open(name) as data:
                    return _scan(data)
        f.seek(0)
        for _ in range(3):  # magic number, protocol version, sys info
            _scan(f)
        return _scan(f)


def load_taming_checkpoint(path: Path) -> dict:
    """The tensors of a taming/LDM checkpoint's `state_dict` (or of a bare state dict), read
    with torch's weights_only unpickler; metadata globals become inert stand-ins, any other
    global is refused with a UserError naming the file and the global."""
    try:
        names = pickle_globals(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from None
    foreign = sorted(n for n in names if not n.startswith(METADATA + TORCH_ALLOWED))
    if foreign:
        raise UserError(f"{path}: refused, the checkpoint names {foreign[0]} (would run code "
                        "on loading; only tensors and training metadata are read)")
    stand_ins = [(_stand_in(n), n) for n in sorted(names) if n.startswith(METADATA)]
    try:
        with torch.serialization.safe_globals(stand_ins):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds on refused, truncated or foreign files
        found = re.search(r"GLOBAL (\S+)", str(exc))
        why = f"refused {found.group(1)}" if found else exc.__class__.__name__
        raise UserError(f"{path}: unreadable checkpoint ({why})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise UserError(f"{path}: no state_dict in the checkpoint")
    return {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


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

    sd = _strip_prefix(load_taming_checkpoint(path))
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
