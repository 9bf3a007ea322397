"""Published numbers to print beside ours, each with its source label.

From shared/notes/paper.md: [V] read in a primary source; [S] quoted consistently by several
secondary sources (the paper's tables could not be read directly); values are top-1 %.
"""

from __future__ import annotations

PAPER = "Nguyen et al. 2024, arXiv 2406.09415"

# (dataset, model, ViT/2 top-1, pixel top-1, label, note)
SUPERVISED: list[tuple[str, str, float, float, str, str]] = [
    ("CIFAR-100 32x32", "T (192 wide, 12 deep)", 83.6, 85.1, "S", ""),
    ("CIFAR-100 32x32", "S (384, 12)", 83.7, 86.4, "S", ""),
    ("ImageNet 28x28", "S", 72.9, 74.1, "S", "v2 may use 64x64 [S, conflicting]"),
    ("ImageNet 28x28", "B (768, 12)", 75.7, 76.1, "S", ""),
]

RECIPE_NOTE = ("Paper recipe as read by a third-party port [S, unverified]: AdamW b=(0.9, 0.95), "
               "lr 4e-3, wd 0.3, batch 1024, 2400 epochs, 20 warm-up, cosine; MoCo-v3 "
               "augmentation.")

LOCALITY_NOTE = ("Paper [S], ViT-B/16 on ImageNet 224: baseline 82.8; no position embedding "
                 "81.2; 25K local pixel swaps 57.6 (swap distance δ not found [U]).")

# (model, ViT/2 MAE fine-tune top-1, pixel MAE fine-tune top-1, label): CIFAR-100, mask 75%
MAE_TABLE: list[tuple[str, float, float, str]] = [
    ("T", 85.7, 86.0, "S"),
    ("S", 87.4, 87.7, "S"),
]
MAE_NOTE = ("Paper [S]: CIFAR-100, mask ratio 75%; T from scratch with pixels 85.1. Our default is "
            "a CPU-minutes proxy (tiny model, a few thousand images): compare directions, not "
            "absolute values.")
