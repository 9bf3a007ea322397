"""The input pipeline (data/loader.py): each rank's shard of a batch is bitwise the rows one
process augmenting the whole batch gets (the code before the loader did exactly that), for any
number of ranks and loader workers, from any resume step, on a memory-mapped cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixbench import distributed
from pixbench.config import AugmentConfig
from pixbench.data import loader
from pixbench.data.augment import normalize
from pixbench.data.loader import Rows, StepBatches, batches
from pixbench.rng import epoch_order, generator

# the ImageNet-28 recipe's augmentation (params.yaml recipes.classify) and the CPU profile's
IMAGENET28 = AugmentConfig(hflip=True, crop_padding=0, rrc_scale_min=0.2, color_jitter=0.4,
                           grayscale_p=0.2)
CPU = AugmentConfig(hflip=True, crop_padding=1, rrc_scale_min=None, color_jitter=0.0,
                    grayscale_p=0.0)
MEAN, STD = torch.tensor([0.5, 0.45, 0.4]), torch.tensor([0.25, 0.24, 0.26])
SEED, EPOCH, FIRST = 3, 1, 40  # epoch 1 starts at global step 40


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Rows:
    """A memory-mapped uint8 split, seen through a subset of its rows."""
    path = tmp_path_factory.mktemp("cache") / "train_images.npy"
    arr = np.random.default_rng(0).integers(0, 256, (700, 28, 28, 3), dtype=np.uint8)
    np.save(path, arr)
    return Rows(np.load(path, mmap_mode="r"), np.arange(0, 700, 2)[::-1].copy())  # 350 rows


def single_process(images: Rows, labels, cfg, b: int, step: int, tokens: int | None):
    """What the training loops computed before the loader: the whole global batch augmented
    in one process, then (MAE) the masking noise from the same generator."""
    idx = epoch_order(len(images), SEED, EPOCH)[step * b:(step + 1) * b]
    gen = generator(SEED, FIRST + step)
    x = normalize(images[idx], MEAN, STD, cfg, gen)  # (B, C, H, W)
    noise = torch.rand(b, tokens, generator=gen) if tokens else None
    return x, labels[idx], noise


def dataset(images, labels, cfg, b, *, tokens=None, augment_here=True) -> StepBatches:
    return StepBatches(images, labels, batch_size=b, seed=SEED, epoch=EPOCH, first_step=FIRST,
                       cfg=cfg, mean=MEAN, std=STD, augment_here=augment_here,
                       noise_tokens=tokens)


def as_rank(monkeypatch, r: int, w: int) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: w)
    monkeypatch.setattr(distributed, "rank", lambda: r)


@pytest.mark.parametrize("task", ["classify", "mae"])
@pytest.mark.parametrize("world", [2, 8])
def test_rank_shards_concatenate_to_the_single_process_batch(task, world, images, monkeypatch):
    """Batch 256 at 28px (~600k values: big enough for torch to split ops over threads)."""
    labels = torch.arange(len(images)) % 10
    tokens = 49 if task == "mae" else None
    cfg = IMAGENET28 if task == "classify" else CPU
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want_x, want_y, want_noise = single_process(images, labels, cfg, 256, 0, tokens)
    finally:
        torch.set_num_threads(threads)
    parts = []
    for r in range(world):
        as_rank(monkeypatch, r, world)
        parts.append(dataset(images, labels, cfg, 256, tokens=tokens)[0])
    assert torch.equal(torch.cat([p.x for p in parts]), want_x)
    assert torch.equal(torch.cat([p.y for p in parts]), want_y)
    if tokens:
        assert torch.equal(torch.cat([p.noise for p in parts]), want_noise)


def test_worker_count_and_resume_step_change_nothing(images):
    """Items are keyed by step: 0 or 2 worker processes, from step 0 or a restored step 3."""
    labels = torch.arange(len(images))
    ds = dataset(images, labels, IMAGENET28, 64, tokens=16)
    here = list(batches(ds, 0, workers=0))
    workers = list(batches(ds, 3, workers=2))
    assert len(here) == len(images) // 64 == len(workers) + 3
    for a, b in zip(here[3:], workers):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.noise, b.noise)
    want_x, want_y, _ = single_process(images, labels, IMAGENET28, 64, 4, 16)
    assert torch.equal(here[4].x, want_x) and torch.equal(here[4].y, want_y)


def test_uint8_batches_augment_on_the_device_as_in_the_workers(images):
    """The GPU path's split (uint8 + draws, augmented after the move) gives what the CPU path
    gives; here the 'device' is the CPU, test_gpu_augmentation_is_rank_invariant runs on CUDA."""
    labels = torch.arange(len(images))
    done = dataset(images, labels, IMAGENET28, 64)[2]
    raw = list(batches(dataset(images, labels, IMAGENET28, 64, augment_here=False), 2,
                       workers=0))[0]
    assert raw.x.dtype == torch.uint8 and raw.draws
    x, y, _ = raw.to(torch.device("cpu"), MEAN, STD, IMAGENET28)
    assert torch.equal(x, done.x) and torch.equal(y, done.y)


def test_rows_gather_in_file_order_and_return_in_index_order(images):
    idx = np.array([5, 0, 349, 5, 17])
    got = images.gather(idx)
    want = np.stack([np.asarray(images.images[images.rows[i]]) for i in idx])
    assert np.array_equal(got, want)
    assert images.shape == (350, 28, 28, 3) and torch.equal(images[torch.tensor(idx)],
                                                            torch.from_numpy(want))
    assert torch.equal(images[2:4], torch.from_numpy(np.stack([images.images[images.rows[i]]
                                                               for i in (2, 3)])))


def test_auto_workers_is_zero_on_the_cpu():
    assert loader.auto_workers(torch.device("cpu")) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_augmentation_is_rank_invariant(images, monkeypatch):
    """On the GPU each rank augments its uint8 shard there: shards concatenate to the whole
    batch augmented on the GPU bitwise, and to the CPU result up to float rounding."""
    dev = torch.device("cuda")
    labels = torch.arange(len(images))

    def step1(pin: bool):
        ds = dataset(images, labels, IMAGENET28, 256, augment_here=False)
        return next(batches(ds, 1, workers=1, pin=pin)).to(dev, MEAN, STD, IMAGENET28)[0]

    whole = step1(True)
    parts = []
    for r in range(4):
        as_rank(monkeypatch, r, 4)
        parts.append(step1(r % 2 == 0))
    assert torch.equal(torch.cat(parts), whole)
    as_rank(monkeypatch, 0, 1)
    cpu = dataset(images, labels, IMAGENET28, 256)[1].x
    torch.testing.assert_close(whole.cpu(), cpu, atol=1e-4, rtol=1e-4)
