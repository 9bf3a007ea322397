"""One ViT code path for every patch size; p=1 is the pixel model."""

from __future__ import annotations

import pytest
import torch

from pixbench.models.vit import SIZES, display_name, model_key, vit


@pytest.mark.parametrize("patch", [1, 2, 4, 8, 16])
def test_forward_shapes_for_every_patch(patch):
    model = vit(size="xxs", patch=patch, image_size=16, in_chans=3, num_classes=7)
    x = torch.randn(2, 3, 16, 16)
    tokens = model.patch_embed(x)  # (N, T, D)
    assert tokens.shape == (2, (16 // patch) ** 2, SIZES["xxs"].dim)
    assert model(x).shape == (2, 7)


def test_pixel_model_projects_each_pixel_linearly():
    model = vit(size="xxs", patch=1, image_size=8, in_chans=3, num_classes=2)
    conv = model.patch_embed.proj
    assert conv.kernel_size == (1, 1) and conv.stride == (1, 1)
    x = torch.randn(1, 3, 8, 8)
    tok = model.patch_embed(x)[0, 8 * 2 + 5]  # pixel (row 2, col 5)
    expected = conv.weight[:, :, 0, 0] @ x[0, :, 2, 5] + conv.bias
    assert torch.allclose(tok, expected, atol=1e-6)


def test_position_embeddings_learned_random_no_interpolation():
    model = vit(size="xxs", patch=1, image_size=8, in_chans=1, num_classes=2)
    assert model.pos_embed.requires_grad and model.pos_embed.shape == (1, 64, SIZES["xxs"].dim)
    assert model.pos_embed.std() > 0 and not model.dynamic_img_size
    with pytest.raises(Exception):
        model(torch.randn(1, 1, 16, 16))  # no 2D interpolation to another grid


def test_names_and_errors():
    assert model_key("s", 4) == "vit-s-p4" and display_name("s", 4) == "ViT-S/4"
    assert display_name("xxs", 1) == "ViT-XXS/1"
    with pytest.raises(ValueError, match="does not divide"):
        vit(size="xxs", patch=3, image_size=16, in_chans=1, num_classes=2)
    with pytest.raises(ValueError, match="unknown size"):
        vit(size="huge", patch=1, image_size=16, in_chans=1, num_classes=2)


def test_no_pit_names_registered_in_timm():
    import timm

    ours = [n for n in timm.list_models("pit_*") if "pixbench" in n]
    assert ours == [] and "vit-s-p4" not in timm.list_models()
