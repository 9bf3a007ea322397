"""The analytic FLOP formula against torch's FlopCounterMode on manual (non-fused) attention."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pixbench.models.flops import attention_fraction, vit_forward_flops, vit_train_flops
from pixbench.models.vit import vit, vit_shape


def _counted_forward(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_formula_matches_manual_attention_count(patch, pool):
    kw = dict(size="xxs", patch=patch, image_size=16, in_chans=3, num_classes=10, pool=pool)
    model = vit(**kw).eval()
    for block in model.blocks:
        block.attn.fused_attn = False  # QK^T and AV become visible matmuls
    counted = _counted_forward(model, torch.randn(2, 3, 16, 16)) / 2
    assert vit_forward_flops(vit_shape(**kw)) == pytest.approx(counted, rel=1e-9)


def test_fused_attention_is_invisible_to_flop_counter():
    """Why attention is counted analytically: the counter misses CPU fused SDPA entirely."""
    kw = dict(size="xxs", patch=1, image_size=16, in_chans=1, num_classes=10, pool="avg")
    model = vit(**kw).eval()
    fused = _counted_forward(model, torch.randn(1, 1, 16, 16))
    shape = vit_shape(**kw)
    missing = attention_fraction(shape) * vit_forward_flops(shape)
    assert fused == pytest.approx(vit_forward_flops(shape) - missing, rel=1e-9)


def test_train_is_three_forwards_and_matches_paper_table():
    shape = vit_shape(size="s", patch=1, image_size=32, in_chans=3, num_classes=100, pool="avg")
    assert vit_train_flops(shape) == 3 * vit_forward_flops(shape)
    # shared/notes/paper.md: ViT-S on 32x32 pixels is 62.9 GFLOPs forward (blocks only)
    assert vit_forward_flops(shape) / 1e9 == pytest.approx(62.9, rel=0.01)
