"""The optimiser's weight-decay groups: timm's / MAE's exclusions must hold for our ViTs.

timm's VisionTransformer.no_weight_decay names pos_embed and cls_token, and timm's
param_groups_weight_decay (like MAE's util/lr_decay.param_groups_lrd) also leaves every 1-d
tensor (biases, norm gains) undecayed. A learned position embedding pulled towards zero would
hold the pixel model (p=1) on its bag-of-pixels plateau longer (issue 17), so a regression here
changes results silently: this test names the parameters.
"""

from __future__ import annotations

import pytest

from pixbench.models.vit import vit
from pixbench.tasks.optim import param_groups


def _groups(model, wd=0.05):
    decay, no_decay = param_groups(model, wd)
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_pos_embed_cls_token_norms_and_biases_are_not_decayed(pool):
    model = vit(size="xxs", patch=4, image_size=12, in_chans=1, num_classes=10, pool=pool)
    decay, no_decay = _groups(model)
    assert "pos_embed" in no_decay
    assert ("cls_token" in no_decay) == (pool == "cls")
    assert {n for n, p in model.named_parameters() if p.ndim <= 1} <= no_decay
    # matrices of the blocks, the patch projection and the head are decayed, nothing else
    assert decay == {n for n, p in model.named_parameters() if p.ndim > 1} - {"pos_embed",
                                                                              "cls_token"}
    assert "patch_embed.proj.weight" in decay and "head.weight" in decay


def test_fixed_sincos_pos_embed_is_in_no_group():
    model = vit(size="xxs", patch=4, image_size=12, in_chans=1, num_classes=10,
                pos_embed="sincos")
    decay, no_decay = _groups(model)
    assert "pos_embed" not in decay | no_decay  # requires_grad=False: the optimiser never sees it
