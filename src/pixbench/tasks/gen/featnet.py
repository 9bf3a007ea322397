"""`pixbench featnet train`: the small classifier whose penultimate features score samples
offline (FID/KID/precision-recall) and whose logits give IS, in place of Inception-v3 whose
weights cannot be downloaded here. Its metrics carry a `_featnet` suffix, never mixed with
`_inception` numbers. It trains in well under a minute, so it restarts rather than resumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixbench.config import Paths
from pixbench.genconfig import FeatNetSpec, FidConfig
from pixbench.runio import atomic_write_json, describe_run, read_json
from pixbench.tasks.classify import balanced_subset, open_run_dir, pick_device

WEIGHTS_FILE = "featnet.pt"


def featnet_path(paths: Paths, profile: str, ref: dict) -> Path:
    """The checkpoint of the FID classifier `ref` ({run_id, digest}), checked against it."""
    from pixbench.errors import UserError

    run_dir = paths.run_dir(profile, ref["run_id"])
    spec = read_json(run_dir / "spec.json", "featnet spec")
    if spec.get("digest") != ref["digest"]:
        raise UserError(f"{run_dir / 'spec.json'}: FID classifier of another spec; re-run "
                        "`pixbench featnet train`")
    return run_dir / WEIGHTS_FILE


def reference_cache_name(profile: str, fid: FidConfig, featnet: dict) -> str:
    """Reference statistics depend on the split, its subset and the feature network only."""
    return f"{profile}-{fid.reference}-{fid.reference_images or 'all'}-featnet-{featnet['digest']}"


def reference_images(paths: Paths, profile: str, fid: FidConfig, data_spec: dict) -> torch.Tensor:
    """The real images samples are compared with: uint8 (M, C, H, W), class-balanced."""
    from pixbench.tasks.vq import gen_cache

    ds = gen_cache(paths, profile, data_spec)
    images = np.asarray(getattr(ds, f"{fid.reference}_images"))
    labels = np.asarray(getattr(ds, f"{fid.reference}_labels"))
    idx = balanced_subset(labels, fid.reference_images, len(ds.classes))
    return torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2)


def run(spec: FeatNetSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    from pixbench.eval.fidelity import save_featnet, train_featnet
    from pixbench.tasks.vq import gen_cache

    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = open_run_dir(run_dir, spec, stale)
    if done is not None:
        return done
    dev = pick_device(device)
    ds = gen_cache(paths, spec.profile, spec.data.model_dump())
    describe_run(run_dir, spec, spec.seed, str(dev))
    cfg = spec.featnet
    tr = balanced_subset(np.asarray(ds.train_labels), cfg.train_subset, len(ds.classes))
    model, m = train_featnet(np.asarray(ds.train_images)[tr], np.asarray(ds.train_labels)[tr],
                             np.asarray(ds.val_images), np.asarray(ds.val_labels),
                             width=cfg.width, feature_dim=cfg.feature_dim, epochs=cfg.epochs,
                             batch_size=cfg.batch_size, lr=cfg.lr, seed=spec.seed,
                             log=print if progress else None)
    save_featnet(run_dir / WEIGHTS_FILE, model, {"spec_digest": spec.digest(),
                                                  "run_id": spec.run_id})
    metrics = {"run_id": spec.run_id, "task": "featnet", "profile": spec.profile,
               "seed": spec.seed, **m, "spec_digest": spec.digest()}
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
