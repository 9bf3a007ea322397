"""MaskedAutoencoder: patchify round trip, masking, loss on removed tokens only, encoder transfer
into the classification ViT, and a one-batch overfit for pixel (p=1) and patch (p=4) tokens.

All on size "xxs" and 8x8 images so the whole file runs in seconds on CPU.
"""

from __future__ import annotations

import pytest
import torch

from pixbench.models.mae import DECODER_SIZES, MaskedAutoencoder
from pixbench.models.vit import SIZES, vit

IMAGE = 8
PATCHES = [1, 2, 4, 8]


def mae(patch: int, in_chans: int = 1, target: str = "pix") -> MaskedAutoencoder:
    return MaskedAutoencoder(size="xxs", patch=patch, image_size=IMAGE, in_chans=in_chans,
                             target=target)


def images(n: int, in_chans: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, in_chans, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def one_thread():
    """Tiny models step ~10x faster on one thread than on two busy shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_decoder_sizes_cover_every_encoder_size():
    assert set(DECODER_SIZES) == set(SIZES)
    assert all(d.dim % d.heads == 0 for d in DECODER_SIZES.values())


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("patch", PATCHES)
def test_patchify_round_trip(patch: int, in_chans: int):
    model = mae(patch, in_chans)
    x = images(2, in_chans)
    tokens = model.patchify(x)
    assert tokens.shape == (2, (IMAGE // patch) ** 2, patch * patch * in_chans)
    assert torch.equal(model.unpatchify(tokens), x)


def test_patchify_matches_patch_embed_order():
    """Token l of patchify is the patch that timm's PatchEmbed puts at position l, so targets
    line up with the encoder's (and decoder's) position embeddings."""
    model = mae(2, 3)
    x = images(1, 3)
    proj = model.encoder.patch_embed.proj  # conv, kernel = stride = p
    w = proj.weight.permute(0, 2, 3, 1).reshape(proj.out_channels, -1)  # (D, p*p*C) as p,q,c
    expected = model.patchify(x) @ w.T + proj.bias  # (1, L, D)
    torch.testing.assert_close(model.encoder.patch_embed(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_random_masking_keeps_exact_count_and_kept_tokens(ratio: float):
    model = mae(1)
    n, num_tokens, dim = 4, 64, 5
    x = torch.randn(n, num_tokens, dim)
    kept, mask, ids_restore = model.random_masking(x, ratio, seeded(0))
    len_keep = int(num_tokens * (1 - ratio))
    assert kept.shape == (n, len_keep, dim)
    assert mask.shape == (n, num_tokens)
    assert torch.equal(mask.sum(1), torch.full((n,), float(num_tokens - len_keep)))
    # Kept tokens are exactly the unmasked ones, in shuffled order: undoing the shuffle with
    # ids_restore (padding removed slots with zeros) puts each back where mask == 0.
    padded = torch.cat([kept, torch.zeros(n, num_tokens - len_keep, dim)], dim=1)
    restored = torch.gather(padded, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
    keep = (mask == 0).unsqueeze(-1)
    assert torch.equal(restored, torch.where(keep, x, torch.zeros_like(x)))


def test_random_masking_is_per_sample_and_seeded():
    model = mae(1)
    x = torch.randn(4, 64, 5)
    _, mask_a, _ = model.random_masking(x, 0.75, seeded(0))
    _, mask_b, _ = model.random_masking(x, 0.75, seeded(0))
    _, mask_c, _ = model.random_masking(x, 0.75, seeded(1))
    assert torch.equal(mask_a, mask_b)
    assert not torch.equal(mask_a, mask_c)
    assert len({tuple(row.tolist()) for row in mask_a}) == 4  # every sample its own mask


def test_random_masking_rejects_ratios_without_kept_tokens():
    model = mae(1)
    with pytest.raises(ValueError, match="mask_ratio"):
        model.random_masking(torch.randn(1, 4, 2), 0.9)  # int(4 * 0.1) == 0 kept
    with pytest.raises(ValueError, match="mask_ratio"):
        model.random_masking(torch.randn(1, 4, 2), 1.0)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("patch", PATCHES)
def test_forward_shapes(patch: int, in_chans: int):
    model = mae(patch, in_chans)
    num_tokens = (IMAGE // patch) ** 2
    len_keep = int(num_tokens * 0.25)
    if len_keep == 0:  # p=8: a single token cannot be 75 % masked
        with pytest.raises(ValueError, match="keeps no token"):
            model(images(2, in_chans), 0.75, seeded(0))
        return
    x = images(2, in_chans)
    latent, mask, ids_restore = model.forward_encoder(x, 0.75, seeded(0))
    assert latent.shape == (2, len_keep, SIZES["xxs"].dim)
    assert ids_restore.shape == (2, num_tokens)
    loss, pred, mask = model(x, 0.75, seeded(0))
    assert pred.shape == (2, num_tokens, patch * patch * in_chans)
    assert mask.shape == (2, num_tokens)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.unpatchify(pred).shape == x.shape


@pytest.mark.parametrize("target", ["pix", "norm_pix"])
def test_forward_loss_ignores_visible_tokens(target: str):
    model = mae(2, 3, target)
    x = images(2, 3)
    _, pred, mask = model(x, 0.75, seeded(0))
    pred = pred.detach()
    changed = torch.where(mask.bool().unsqueeze(-1), pred, pred + 100.0)  # visible only
    assert torch.equal(model.forward_loss(x, pred, mask), model.forward_loss(x, changed, mask))
    changed_masked = torch.where(mask.bool().unsqueeze(-1), pred + 1.0, pred)
    assert model.forward_loss(x, changed_masked, mask) != model.forward_loss(x, pred, mask)


def test_forward_loss_is_mse_on_masked_tokens():
    model = mae(4, 1, "pix")
    x = images(1, 1)
    pred = torch.zeros(1, 4, 16)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    tokens = model.patchify(x)
    expected = (tokens[0, 0].pow(2).mean() + tokens[0, 3].pow(2).mean()) / 2
    torch.testing.assert_close(model.forward_loss(x, pred, mask), expected)


def test_norm_pix_target_is_per_token_standardised():
    model = mae(2, 3, "norm_pix")
    target = model.reconstruction_target(images(2, 3) * 5 + 3)
    torch.testing.assert_close(target.mean(-1), torch.zeros(target.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.var(-1), torch.ones(target.shape[:2]), atol=1e-3, rtol=0)


def test_norm_pix_refuses_one_value_tokens_but_allows_rgb_pixels():
    with pytest.raises(ValueError, match="all-zero target"):
        mae(1, 1, "norm_pix")
    rgb = mae(1, 3, "norm_pix")  # defined (chroma only), so allowed
    assert torch.isfinite(rgb(images(2, 3), 0.75, seeded(0))[0])
    with pytest.raises(ValueError, match="unknown target"):
        mae(1, 1, "raw")


@pytest.mark.parametrize("patch", [1, 4])
def test_encoder_state_dict_loads_exactly_into_classifier(patch: int):
    model = mae(patch, 3)
    classifier = vit(size="xxs", patch=patch, image_size=IMAGE, in_chans=3, num_classes=10,
                     pool="avg")
    state = model.encoder_state_dict()
    result = classifier.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight",
                                        "fc_norm.bias"}
    loaded = classifier.state_dict()
    assert state  # non-empty, and every tensor arrived unchanged
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    # Nothing of the decoder or the pre-training norm leaks into the transferred weights.
    assert not any(k.startswith(("decoder", "mask_token", "encoder_norm")) for k in state)


def test_no_unused_parameters():
    """Every parameter gets a gradient (DDP without find_unused_parameters needs this)."""
    model = mae(2, 3)
    model(images(2, 3), 0.75, seeded(0))[0].backward()
    assert all(p.grad is not None for p in model.parameters())


# Fixed batch, fixed mask every step: pure memorisation, so the loss must collapse. Observed on
# 2 shared cores: p=4 falls >1000x within 150 steps; p=1 sits on a plateau (~0.7) for ~150 steps
# before dropping >100x by step 300, so it gets 300 steps. 5x leaves a wide margin for both.
@pytest.mark.parametrize(("patch", "target", "steps"),
                         [(1, "pix", 300), (4, "pix", 150), (4, "norm_pix", 150)])
def test_one_batch_overfit(patch: int, target: str, steps: int, one_thread):
    torch.manual_seed(0)
    model = mae(patch, 1, target)
    x = images(8, 1, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss, _, _ = model(x, 0.75, seeded(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])
