"""Locality: the pixel model's exact equivariance to pixel permutations, and its absence at p>1."""

from __future__ import annotations

import pytest
import torch

from pixbench.models.locality import local_swap_permutation, permute_pixels, shuffle_permutation
from pixbench.models.vit import vit


def _model(patch: int, perm=None, pos_embed="learn"):
    torch.manual_seed(0)
    kw = dict(size="xxs", patch=patch, image_size=8, in_chans=3, num_classes=5, pool="avg")
    model = vit(**kw, pixel_perm=perm, pos_embed=pos_embed).double().eval()
    if pos_embed == "learn":  # as after training: positions large enough to matter
        with torch.no_grad():
            model.pos_embed.normal_(0.0, 1.0)
    return model


def _permute_pos_embed(model, perm: torch.Tensor) -> None:
    """Token k of the permuted image is token perm[k] of the original: move positions along."""
    with torch.no_grad():
        model.pos_embed.copy_(model.pos_embed[:, perm])


def test_pixel_model_is_equivariant_to_any_permutation():
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    perm = shuffle_permutation(8, 8, seed=3)
    reference = _model(1)(x)
    permuted = _model(1)
    _permute_pos_embed(permuted, perm)
    out = permuted(permute_pixels(x, perm))
    # identical up to float64 summation order (attention and pooling sum tokens in another order)
    assert torch.allclose(out, reference, rtol=0, atol=1e-12)
    # without moving the positions, the permuted image gives another output (>> 1e-12)
    assert (_model(1)(permute_pixels(x, perm)) - reference).abs().max() > 1e-6


@pytest.mark.parametrize("patch", [2, 4])
def test_no_such_identity_with_patches(patch):
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    perm = shuffle_permutation(8, 8, seed=3)
    reference = _model(patch)(x)
    # the best a patch model can do: move each patch's position with its first pixel
    tokens_perm = torch.arange((8 // patch) ** 2)
    permuted = _model(patch)
    _permute_pos_embed(permuted, tokens_perm)
    assert (permuted(permute_pixels(x, perm)) - reference).abs().max() > 1e-6


def test_attached_permutation_is_applied_where_tokens_are_made():
    x = torch.randn(2, 3, 8, 8)
    perm = shuffle_permutation(8, 8, seed=1)
    with_hook = _model(2, perm=perm).float()
    plain = _model(2).float()
    assert torch.equal(with_hook(x), plain(permute_pixels(x, perm)))
    assert "patch_embed.pixel_perm" not in with_hook.state_dict()  # a plain ViT's state dict


def test_local_swaps_stay_within_distance_and_are_permutations():
    perm = local_swap_permutation(12, 12, swaps=72, distance=2, seed=0)
    assert sorted(perm.tolist()) == list(range(144))
    moved = (perm != torch.arange(144)).nonzero().flatten()
    assert 0 < len(moved) <= 144
    dy = (perm[moved] // 12 - moved // 12).abs()
    dx = (perm[moved] % 12 - moved % 12).abs()
    assert dy.max() <= 2 * 72 and dx.max() <= 2 * 72  # chains of swaps can travel further
    assert torch.equal(perm, local_swap_permutation(12, 12, swaps=72, distance=2, seed=0))
    single = local_swap_permutation(12, 12, swaps=1, distance=2, seed=5)
    m = (single != torch.arange(144)).nonzero().flatten()
    assert len(m) in (0, 2) and all(abs(int(single[i]) // 12 - int(i) // 12) <= 2 for i in m)


def test_sincos_and_none_position_embeddings():
    sincos = _model(2, pos_embed="sincos")
    assert not sincos.pos_embed.requires_grad and sincos.pos_embed.shape == (1, 16, 48)
    assert _model(2, pos_embed="none").pos_embed is None
