"""The named model sizes, without torch: config validation reads them, so loading
params.yaml (`params show`, a finished cell that is only re-published, a SLURM submission)
never imports torch (~1.5-2.5 s of CPU per process; reports/bench/pipeline-speed.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViTSize:
    """Width, depth and heads of a named size."""

    name: str  # display letter(s): "S" in ViT-S/4
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


# CPU sizes first (the defaults must train in minutes on 2 cores), then the paper's T/S/B,
# which are ViT-Ti/S/B (Touvron et al. 2021; Dosovitskiy et al. 2021) with 12 blocks.
SIZES: dict[str, ViTSize] = {
    "xxs": ViTSize("XXS", dim=48, depth=3, heads=3),
    "xs": ViTSize("XS", dim=64, depth=4, heads=4),
    "m": ViTSize("M", dim=128, depth=4, heads=4),
    "t": ViTSize("T", dim=192, depth=12, heads=3),
    "s": ViTSize("S", dim=384, depth=12, heads=6),
    "b": ViTSize("B", dim=768, depth=12, heads=12),
    "l": ViTSize("L", dim=1024, depth=24, heads=16),
}

# Peebles & Xie 2023, Table 1 (hidden size, depth, heads), plus two CPU sizes that train in
# minutes on 2 cores. Values are DiT constructor kwargs: `DiT(**DIT_SIZES["s"], ...)`.
DIT_SIZES: dict[str, dict] = {
    "xxs": {"hidden_size": 64, "depth": 4, "num_heads": 4},
    "xs": {"hidden_size": 96, "depth": 6, "num_heads": 6},
    "s": {"hidden_size": 384, "depth": 12, "num_heads": 6},
    "b": {"hidden_size": 768, "depth": 12, "num_heads": 12},
    "l": {"hidden_size": 1024, "depth": 24, "num_heads": 16},
    "xl": {"hidden_size": 1152, "depth": 28, "num_heads": 16},
}
