"""FeatNet: a small CNN classifier whose penultimate layer replaces Inception for offline FID.

The generation track scores DiT samples with FID/IS/KID/precision-recall. Standard Inception
weights need a download and run at ~3 img/s on CPU, so the default extractor is this net trained
on the dataset itself: `features` (the penultimate layer) feeds FID/KID/PRC, `forward` (logits)
feeds IS. Its stem is strided, which keeps training on 20k 32x32 images to ~15 s per epoch on a
2-core CPU.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_gelu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.GELU())


class FeatNet(nn.Module):
    """Input float (N, in_chans, H, W) in [-1, 1], any H = W >= 8.

    Stages (width w): stride-2 conv w, conv w @ H/2, pool; 2 conv 2w @ H/4, pool; conv 4w @ H/8,
    global average; Linear(4w, feature_dim) + GELU = features; Linear → logits. Every conv is
    followed by BatchNorm and GELU. width=32, feature_dim=128, 10 classes: ~157k parameters.
    """

    def __init__(self, *, in_chans: int, num_classes: int, width: int = 32,
                 feature_dim: int = 128) -> None:
        super().__init__()
        # Kept so that a checkpoint can rebuild the same net (see eval/fidelity.save_featnet).
        self.hparams = {"in_chans": in_chans, "num_classes": num_classes, "width": width,
                        "feature_dim": feature_dim}
        w = width
        self.body = nn.Sequential(
            # A strided stem: full-resolution layers dominated training time on CPU (~40%).
            _conv_bn_gelu(in_chans, w, stride=2), _conv_bn_gelu(w, w), nn.MaxPool2d(2),
            _conv_bn_gelu(w, 2 * w), _conv_bn_gelu(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_bn_gelu(2 * w, 4 * w),
        )
        self.proj = nn.Sequential(nn.Linear(4 * w, feature_dim), nn.GELU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) → (N, feature_dim): the FID/KID/PRC features."""
        h = self.body(x)  # (N, 4w, H/8, W/8)
        return self.proj(h.mean(dim=(2, 3)))  # (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) → logits (N, num_classes): the IS logits."""
        return self.head(self.features(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass for both: (N, feature_dim), (N, num_classes)."""
        f = self.features(x)
        return f, self.head(f)
