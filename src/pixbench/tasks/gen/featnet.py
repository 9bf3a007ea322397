"""`pixbench featnet train`: the small classifier whose penultimate features score samples
offline (FID/KID/precision-recall) and whose logits give IS, in place of Inception-v3 whose
weights cannot be downloaded here. Its metrics carry a `_featnet` suffix, never mixed with
`_inception` numbers (eval/fidelity.py holds the metrics and the checkpoint format).

Training: AdamW, 2% warm-up then cosine, random horizontal flips, a fixed batch order per
epoch; on the task runner (resumes mid-epoch), data parallel with global-batch BatchNorm
(syncbn) so the recipe and the result do not depend on the number of ranks.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pixbench import distributed
from pixbench.config import Paths
from pixbench.data.subsets import balanced_subset
from pixbench.errors import UserError
from pixbench.eval.fidelity import featnet_payload, load_featnet, to_net_input
from pixbench.config import FeatNetSpec, FidConfig
from pixbench.models.featnet import FeatNet
from pixbench.runio import read_json
from pixbench.tasks.gen.data import gen_cache
from pixbench.tasks.gen.parallel import chunked
from pixbench.tasks.gen.syncbn import sync_batchnorm
from pixbench.tasks.optim import set_lr
from pixbench.tasks.runner import Run, State
from pixbench.tasks.trainer import Body, Schedule, fit, identity, run_task

WEIGHTS_FILE = "featnet.pt"
CHECKPOINT_EVERY_S = 60.0  # the featnet config has no interval: an epoch takes seconds
EVAL_CHUNK = 1000


def featnet_path(paths: Paths, profile: str, ref: dict) -> Path:
    """The checkpoint of the FID classifier `ref` ({run_id, digest}), checked against it and
    loaded once (missing, corrupt: a UserError naming it), so that a task asking for it
    before its first write is refused with its run dir untouched."""
    run_dir = paths.run_dir(profile, ref["run_id"])
    spec = read_json(run_dir / "spec.json", "featnet spec")
    if spec.get("digest") != ref["digest"]:
        raise UserError(f"{run_dir / 'spec.json'}: FID classifier of another spec; re-run "
                        "`pixbench featnet train`")
    load_featnet(run_dir / WEIGHTS_FILE)
    return run_dir / WEIGHTS_FILE


def reference_cache_name(profile: str, fid: FidConfig, featnet: dict) -> str:
    """Reference statistics depend on the split, its subset and the feature network only."""
    return f"{profile}-{fid.reference}-{fid.reference_images or 'all'}-featnet-{featnet['digest']}"


def nhwc_to_input(images: np.ndarray, in_chans: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> the FeatNet input, float (N, in_chans, H, W) in [-1, 1]."""
    return to_net_input(torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2),
                        in_chans)


@dataclasses.dataclass(frozen=True)
class Recipe:
    width: int
    feature_dim: int
    epochs: int
    batch_size: int
    lr: float
    seed: int


class Trainer(Body):
    """The FID classifier's training (the trainer's body): model (channels_last: ~20% faster
    convolutions on CPU; the state dict is unaffected), its DDP wrapper and AdamW, over the
    rows `rows` of a uint8 (N, H, W, C) split that may be a memmap: each step gathers its batch
    by index and converts only that (no float copy of the split; the values are those of a
    whole-split conversion, bit for bit). A curve row per epoch."""

    mean_over_ranks = True  # each rank's loss is weighted by its share of the global batch

    def __init__(self, rc: Recipe, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 device: torch.device, rows: np.ndarray | None = None) -> None:
        self.rc, self.device = rc, device
        in_chans = int(images.shape[3])
        torch.manual_seed(rc.seed)  # the init draws from the global generator
        model = FeatNet(in_chans=in_chans, num_classes=num_classes, width=rc.width,
                        feature_dim=rc.feature_dim)
        self.model = sync_batchnorm(model.to(device, memory_format=torch.channels_last))
        self.ddp = distributed.wrap(self.model, device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=rc.lr, weight_decay=0.05)
        self.images, self.in_chans = images, in_chans
        self.rows = np.arange(len(images)) if rows is None else np.asarray(rows)  # (N,)
        self.y = torch.as_tensor(np.asarray(labels)[self.rows], dtype=torch.long)  # (N,)
        self.n = len(self.rows)
        self.per_epoch = math.ceil(self.n / rc.batch_size)
        self.schedule = Schedule(rc.epochs * self.per_epoch, self.per_epoch)

    def modules(self) -> dict:
        return {"model": self.model, "optimizer": self.opt}

    def batch(self, mine: torch.Tensor) -> torch.Tensor:
        """The FeatNet input of training rows `mine` (b,), channels_last, on the device."""
        rows = self.rows[mine.numpy()]  # (b,) indices into the split
        x = nhwc_to_input(np.asarray(self.images[rows]), self.in_chans)  # (b, C, H, W)
        return x.contiguous(memory_format=torch.channels_last).to(self.device)

    def lr_at(self, step: int) -> float:
        """2% linear warm-up then cosine to 0 (as a LambdaLR of the base lr)."""
        total = max(1, self.rc.epochs * self.per_epoch)
        warmup = max(1, total // 50)
        return self.rc.lr * min((step + 1) / warmup, 0.5 * (1 + math.cos(
            math.pi * min(1.0, (step + 1 - warmup) / max(1, total - warmup)))))

    def epoch_draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(order (N,), flips (N,)) of an epoch: one generator seeded once and advanced epoch by
        epoch, replayed up to `epoch`, so a resumed run draws what an uninterrupted one did."""
        gen = torch.Generator().manual_seed(self.rc.seed)
        for _ in range(epoch + 1):
            order = torch.randperm(self.n, generator=gen)
            flips = torch.rand(self.n, generator=gen) < 0.5
        return order, flips

    def start(self, state: State) -> None:
        self.model.train()
        self.order, self.flips = self.epoch_draws(state.epoch)

    def step(self, state: State) -> dict:
        """One update on the global batch of this step, this rank on its slice. The last batch
        of an epoch may be short and split unevenly, so each rank's mean is weighted by its
        share (DDP then averages to the global mean); the window's mean is per image."""
        B, s = self.rc.batch_size, state.epoch_step
        idx = self.order[s * B:(s + 1) * B]
        set_lr(self.opt, self.lr_at(state.global_step))
        mine = idx[distributed.shard_range(len(idx))]
        xb = self.batch(mine)  # (b, C, H, W)
        xb = torch.where(self.flips[mine, None, None, None].to(self.device), xb.flip(3), xb)
        logits = self.ddp(xb)  # (b, K)
        share = len(mine) * distributed.world_size() / len(idx)  # 1.0 on one process
        loss = (F.cross_entropy(logits, self.y[mine].to(self.device)) * share if len(mine)
                else logits.sum() * 0.0)  # an empty shard still takes part in DDP's reduction
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # DDP's buckets are contiguous, channels_last gradients are copied into them: a
            # performance note, not an error, that would print on every rank of every run
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            loss.backward()
        self.opt.step()
        return {"loss": loss.detach(), "n": len(idx)}

    def row(self, state: State, train_loss: float, end: bool) -> dict:
        return {"epoch": state.epoch + 1, "step": state.global_step, "train_loss": train_loss,
                "train_time_s": state.train_time_s}

    def finish(self, state: State) -> None:
        self.model.to(memory_format=torch.contiguous_format).eval()

    def fit(self, state: State) -> State:
        """Train without a run dir (tests, notebooks)."""
        return fit(self, state)


@torch.no_grad()
def top1(model: FeatNet, images: np.ndarray, y: torch.Tensor, device: torch.device) -> float:
    """Top-1 accuracy on uint8 (N, H, W, C) images (a memmap is read chunk by chunk) in fixed
    chunks, sharded across ranks (every rank gets the result)."""
    model.eval()
    in_chans = model.hparams["in_chans"]

    def correct(b: int, start: int, stop: int) -> tuple[torch.Tensor]:
        x = nhwc_to_input(np.asarray(images[start:stop]), in_chans)  # (n, C, H, W)
        pred = model(x.to(device)).argmax(1).cpu()  # (n,)
        return (torch.tensor([int((pred == y[start:stop]).sum())]),)

    (counts,) = chunked(len(images), EVAL_CHUNK, correct, (torch.zeros(0, dtype=torch.long),))
    return int(counts.sum()) / max(1, len(images))


def train_featnet(train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
                  val_labels: np.ndarray, *, width: int, feature_dim: int, epochs: int,
                  batch_size: int, lr: float, seed: int,
                  device: torch.device = torch.device("cpu")) -> tuple[FeatNet, dict]:
    """Train a FeatNet on uint8 (N, H, W, C) images without a run dir (tests, notebooks).
    Returns (model in eval mode, {"val_top1", "train_s", "params"})."""
    num_classes = int(max(train_labels.max(), val_labels.max() if len(val_labels) else 0)) + 1
    tr = Trainer(Recipe(width, feature_dim, epochs, batch_size, lr, seed), train_images,
                 train_labels, num_classes, device)
    state = tr.fit(State())
    return tr.model, _scores(tr, val_images, val_labels, state)


def _scores(tr: Trainer, val_images: np.ndarray, val_labels: np.ndarray, state: State) -> dict:
    acc = top1(tr.model, val_images, torch.tensor(np.asarray(val_labels), dtype=torch.long),
               tr.device)
    return {"val_top1": acc, "train_s": state.train_time_s,
            "params": sum(p.numel() for p in tr.model.parameters())}


class Cell(Trainer):
    """A FeatNet run: the trainer's body plus its outputs (featnet.pt, val top-1)."""

    def __init__(self, ds, val_labels: np.ndarray, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ds, self.val_labels = ds, val_labels

    def progress(self, row: dict) -> str:
        return f"loss {row['train_loss']:.4f}"

    def outputs(self, r: Run, state: State) -> dict:
        scores = _scores(self, self.ds.val_images, self.val_labels, state)
        meta = {"spec_digest": r.spec.digest(), "run_id": r.spec.run_id,
                "image_size": self.ds.image_size, "val_top1": scores["val_top1"]}
        r.write_torch(WEIGHTS_FILE, featnet_payload(self.model, meta))
        return {**identity(r, state), **scores}


class Pinned(Body):
    """The committed FeatNet instead of a trained one (tasks/gen/instruments.py): its bytes are
    copied into the run dir as they are, and its top-1 on this validation split is measured."""

    schedule = Schedule(0)

    def __init__(self, src, model, ds, val_labels: np.ndarray) -> None:
        self.src, self.model, self.ds, self.val_labels = src, model, ds, val_labels

    def outputs(self, r: Run, state: State) -> dict:
        t0 = time.perf_counter()
        acc = top1(self.model.to(r.device), self.ds.val_images,
                   torch.tensor(self.val_labels, dtype=torch.long), r.device)
        r.write_bytes(WEIGHTS_FILE, self.src.read_bytes())
        return {**identity(r, state), "pretrained": True, "val_top1": acc, "train_s": 0.0,
                "params": sum(p.numel() for p in self.model.parameters()),
                "wall_s": time.perf_counter() - t0}


def _pinned(spec: FeatNetSpec, paths: Paths, ds, val_labels: np.ndarray) -> Pinned:
    """The pinned FeatNet, located and checked against its sha256 and this data."""
    from pixbench.eval.fidelity import featnet_meta, load_featnet
    from pixbench.tasks.gen.instruments import check_pinned, locate

    pre = spec.featnet.pretrained
    src = locate(pre, paths, "featnet.pretrained")
    check_pinned(pre, src, "featnet.pretrained")
    model, meta = load_featnet(src), featnet_meta(src)
    if meta.get("image_size") != ds.image_size or model.hparams["in_chans"] != ds.channels:
        raise UserError(f"{src}: a FeatNet for {meta.get('image_size')} px, "
                        f"{model.hparams['in_chans']} channels; gen.data gives "
                        f"{ds.image_size} px, {ds.channels} (featnet.pretrained)")
    return Pinned(src, model, ds, val_labels)


def run(spec: FeatNetSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """Train the FID classifier (or take the pinned one); resumes from ckpt/last.pt; writes
    featnet.pt (rank 0)."""
    cfg = spec.featnet

    def build(r: Run) -> Body:
        ds = gen_cache(paths, spec.profile, spec.data.model_dump())
        labels, val_labels = np.asarray(ds.train_labels), np.asarray(ds.val_labels)
        if cfg.pretrained is not None:
            return _pinned(spec, paths, ds, val_labels)
        tr_idx = balanced_subset(labels, cfg.train_subset, len(ds.classes))
        rc = Recipe(cfg.width, cfg.feature_dim, cfg.epochs, cfg.batch_size, cfg.lr, spec.seed)
        num_classes = int(max(labels[tr_idx].max(), val_labels.max() if len(val_labels) else 0)) + 1
        return Cell(ds, val_labels, rc, ds.train_images, labels, num_classes, r.device,
                    rows=tr_idx)

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress,
                    checkpoint_every_s=CHECKPOINT_EVERY_S)
