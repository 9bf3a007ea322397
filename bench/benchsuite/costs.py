"""Device-hours to reproduce the paper's tables with its recipe, from this run's measurements.

Each row is one training run (one seed) of the paper's supervised tables: CIFAR-100 32x32,
T and S at p=1 and p=2, 2400 epochs of 50,000 images; ImageNet 28x28, S and B at p=1 and p=2,
300 epochs of 1,281,167 images (epochs not published, 300 as in DeiT; params.yaml imagenet28).
Evaluation passes are left out (a few % of training at these epoch counts).

Measured: a train case of the same size, patch and image size in the main dtype exists; the
faster of eager and compiled is used. Analytic: none exists, so hours = FLOPs ÷ (the run's peak
× the MFU of the nearest measured train case: same size first, then the closest token count),
and the row says which case lent its MFU. On a CPU the figures are CPU-hours, for scale only.
"""

from __future__ import annotations

import math

from benchsuite.derive import TRAIN, ok

IMAGENET_TRAIN = 1_281_167
PAPER_RUNS = [  # (table, size, patch, image_size, num_classes, images per epoch, epochs)
    ("CIFAR-100 32x32", "t", 1, 32, 100, 50_000, 2400),
    ("CIFAR-100 32x32", "t", 2, 32, 100, 50_000, 2400),
    ("CIFAR-100 32x32", "s", 1, 32, 100, 50_000, 2400),
    ("CIFAR-100 32x32", "s", 2, 32, 100, 50_000, 2400),
    ("ImageNet 28x28", "s", 1, 28, 1000, IMAGENET_TRAIN, 300),
    ("ImageNet 28x28", "s", 2, 28, 1000, IMAGENET_TRAIN, 300),
    ("ImageNet 28x28", "b", 1, 28, 1000, IMAGENET_TRAIN, 300),
    ("ImageNet 28x28", "b", 2, 28, 1000, IMAGENET_TRAIN, 300),
]


def _train_flops(size: str, patch: int, image: int, classes: int) -> tuple[float, int]:
    from pixbench.models.flops import vit_train_flops
    from pixbench.models.vit import vit_shape

    shape = vit_shape(size=size, patch=patch, image_size=image, in_chans=3, num_classes=classes,
                      pool="avg")
    return vit_train_flops(shape), shape.tokens


def _nearest(trains: list[dict], size: str, tokens: int) -> dict | None:
    if not trains:
        return None
    return min(trains, key=lambda r: (r["params"]["size"] != size,
                                      abs(math.log(r["tokens"] / tokens)), r["id"]))


def cost_estimate(records: list[dict], peaks: dict, device: str, dtype: str) -> dict:
    trains = [r for r in ok(records, TRAIN) if r["params"]["dtype"] == dtype
              and r["group"] in ("throughput", "compile") and r.get("mfu") is not None]
    unit = "GPU-hours" if device == "cuda" else "CPU-hours, for scale"
    rows = []
    for table, size, patch, image, classes, per_epoch, epochs in PAPER_RUNS:
        images = per_epoch * epochs
        flops, tokens = _train_flops(size, patch, image, classes)
        row = {"table": table, "size": size, "patch": patch, "image_size": image,
               "epochs": epochs, "images": images, "train_flops_per_image": flops,
               "tokens": tokens}
        match = [r for r in trains if (r["params"]["size"], r["params"]["patch"],
                                       r["params"]["image_size"]) == (size, patch, image)]
        if match:
            best = max(match, key=lambda r: r["items_per_s"])
            row.update(method="measured", source=best["id"], items_per_s=best["items_per_s"],
                       hours=images / best["items_per_s"] / 3600)
        elif (ref := _nearest(trains, size, tokens)) is not None:
            rate = peaks[dtype]["flops_per_s"] * ref["mfu"]
            row.update(method="analytic", source=ref["id"], mfu=ref["mfu"],
                       items_per_s=rate / flops, hours=images * flops / rate / 3600)
        else:
            row.update(method="none", hours=None)
        rows.append(row)
    totals = {}
    for r in rows:
        if r["hours"] is not None:
            totals[r["table"]] = totals.get(r["table"], 0.0) + r["hours"]
    return {"unit": unit, "dtype": dtype, "seeds": 1, "rows": rows, "totals": totals,
            "note": "one seed per row, training only; multiply by the number of seeds"}
