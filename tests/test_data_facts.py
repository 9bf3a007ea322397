"""Data facts from the pixels (issue 25): data.channels auto stores one channel when every image
of both splits has R == G == B, whatever the file mode (a digit set saved as RGB PNGs), and
keeps three when a single image has colour; the decision is the whole dataset's, the same for
1 or 2 decode workers and for a sharded prepare; the manifest says how channels were decided
and the report's dataset section shows it, with the training augmentations in effect."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import cache_bytes, imagefolder_cfg, write_params
from pixbench.config import DataConfig, Paths, load_params
from pixbench.data import prepare as prep
from pixbench.data import shards, stream
from pixbench.data.cache import load_cache
from pixbench.data.prepare import decode_file, prepare
from pixbench.data.sources import Split
from pixbench.report.dataset import dataset_section

SIZE = 8
COUNTS = {"train": 8, "val": 3}  # per class: 24 + 9 images, 16-image chunks -> 3 chunks
FLIP_WHY = ("horizontal flips (turn off for digits and text: a flipped 2 or letter is "
            "another symbol)")


def _digit(rng, d: int) -> Image.Image:
    """A gray digit on a noisy gray ground, saved as RGB (R = G = B), as many scans are."""
    ground = rng.integers(0, 40, (16, 16), dtype=np.uint8)
    im = Image.fromarray(ground)
    ImageDraw.Draw(im).text((4 + rng.integers(0, 3), 2 + rng.integers(0, 3)), str(d),
                            fill=int(rng.integers(180, 256)))
    return im.convert("RGB")


def _blob(rng, rgb: tuple[int, int, int]) -> Image.Image:
    """The same shape in every class: only its colour tells the classes apart."""
    a = np.full((16, 16, 3), 30, np.uint8)
    y, x = rng.integers(2, 8, 2)
    a[y:y + 7, x:x + 7] = rgb
    return Image.fromarray(a)


def _tree(root, draw) -> None:
    rng = np.random.default_rng(0)
    for split, n in COUNTS.items():
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(rng, c).save(root / split / f"c{c}" / f"{i:02d}.png")


@pytest.fixture
def digits(tmp_path):
    root = tmp_path / "digits"
    _tree(root, _digit)
    return root


@pytest.fixture
def colours(tmp_path):
    root = tmp_path / "colours"
    _tree(root, lambda rng, c: _blob(rng, [(200, 30, 30), (30, 200, 30), (30, 30, 200)][c]))
    return root


def cfg(root, **kw) -> DataConfig:
    return imagefolder_cfg(root, SIZE, **kw)


_bytes = cache_bytes


def _images(cache_dir) -> np.ndarray:
    ds = load_cache(cache_dir)
    return np.concatenate([ds.train_images, ds.val_images])


def test_decode_file_gives_one_channel_exactly_when_every_pixel_is_gray(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (10, 10), dtype=np.uint8)
    Image.fromarray(a).convert("RGB").save(tmp_path / "g.png")
    rgb = np.repeat(a[..., None], 3, axis=2)
    rgb[9, 9, 2] ^= 1  # one blue value off by one: colour
    Image.fromarray(rgb).save(tmp_path / "c.png")
    gray, _ = decode_file((str(tmp_path / "g.png"), 10))
    colour, _ = decode_file((str(tmp_path / "c.png"), 10))
    assert gray.shape == (10, 10, 1) and (gray[..., 0] == a).all()
    assert colour.shape == (10, 10, 3)


def test_gray_digits_saved_as_rgb_are_one_channel_for_any_worker_count(digits, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)  # 16-image chunks: 3 of them, 2 processes
    assert Image.open(next((digits / "train" / "c0").iterdir())).mode == "RGB"
    m = prepare(cfg(digits), tmp_path / "w1", None, workers=1)
    prepare(cfg(digits), tmp_path / "w2", None, workers=2)
    assert m["channels"] == 1 and m["channels_from"] == "content: R=G=B in all 33 images"
    assert _bytes(tmp_path / "w1") == _bytes(tmp_path / "w2")
    # explicit channels as before: 1 is the same pixels (luma of R = G = B is that value),
    # 3 replicates them; neither records a content decision
    one = prepare(cfg(digits, channels=1), tmp_path / "one", None, workers=2)
    three = prepare(cfg(digits, channels=3), tmp_path / "three", None, workers=2)
    assert "channels_from" not in one and "channels_from" not in three
    np.testing.assert_array_equal(_images(tmp_path / "one"), _images(tmp_path / "w1"))
    np.testing.assert_array_equal(_images(tmp_path / "three"),
                                  np.repeat(_images(tmp_path / "w1"), 3, axis=3))
    assert three["mean"] == m["mean"] * 3  # [v] -> [v, v, v]: one statistic per channel


@pytest.mark.parametrize("colour_in_last_chunk", [False, True])
def test_shards_decide_for_the_whole_dataset(digits, tmp_path, monkeypatch, colour_in_last_chunk):
    """Array tasks each see a third of the chunks: one colour image in the last val chunk
    still makes every chunk 3 channels, and a sharded prepare equals a local one."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    if colour_in_last_chunk:
        _blob(np.random.default_rng(2), (200, 30, 30)).save(digits / "val" / "c2" / "zz.png")
    ref = prepare(cfg(digits), tmp_path / "ref", None, workers=2)
    work = stream.make_plan(cfg(digits), tmp_path / "c", digits)
    assert len(stream.chunk_ids(stream.read_plan(work))) == 3
    for k in (2, 0, 1):
        shards.ShardJob(str(work), k, 3, 1)()
    shards.MergeJob(str(work), str(tmp_path / "c"), "prepare")()
    assert _bytes(tmp_path / "c") == _bytes(tmp_path / "ref")
    assert ref["channels"] == (3 if colour_in_last_chunk else 1)
    assert ("channels_from" in ref) is not colour_in_last_chunk
    if colour_in_last_chunk:  # the gray images replicated: R = G = B, nothing lost
        x = _images(tmp_path / "ref")[:-1]
        assert (x == x[..., :1]).all()


def test_colour_that_decides_the_class_keeps_three_channels(colours, tmp_path):
    m = prepare(cfg(colours), tmp_path / "c", None, workers=1)
    assert m["channels"] == 3 and "channels_from" not in m
    x = load_cache(tmp_path / "c").train_images
    assert x[0, 4, 4].tolist() != x[8, 4, 4].tolist()  # red class vs green class, not luma


def test_array_sources_are_decided_by_their_pixels_too(tmp_path, monkeypatch):
    """CIFAR-like arrays: all R = G = B -> 1 channel with the reason; one colour pixel -> 3."""
    rng = np.random.default_rng(3)
    arrays = {s: np.repeat(rng.integers(0, 256, (n, SIZE, SIZE, 1), dtype=np.uint8), 3, axis=3)
              for s, n in (("train", 6), ("val", 2))}

    def fake_cifar(name, split, data_root, allow_download):
        return Split(arrays[split], np.arange(len(arrays[split])) % 2, ("a", "b"))

    monkeypatch.setattr(prep, "load_cifar", fake_cifar)
    arr_cfg = cfg(None, source="cifar10")
    m = prepare(arr_cfg, tmp_path / "gray", None)
    assert m["channels"] == 1 and m["channels_from"] == "content: R=G=B in all 8 images"
    np.testing.assert_array_equal(load_cache(tmp_path / "gray").val_images, arrays["val"][..., :1])
    assert "channels_from" not in prepare(arr_cfg.model_copy(update={"channels": 3}),
                                          tmp_path / "three", None)
    arrays["val"][1, 0, 0, 1] += 1
    m = prepare(arr_cfg, tmp_path / "colour", None)
    assert m["channels"] == 3 and "channels_from" not in m


def _section(workdir, tiny_params, root, augment: dict) -> str:
    """The report's dataset section of a profile on the ImageFolder `root`."""
    prof = tiny_params["profiles"]["tiny"]
    prof["data"] = {**prof["data"], "source": "imagefolder", "root": str(root),
                    "image_size": SIZE}
    prof["classify"]["augment"] = {**prof["classify"]["augment"], **augment}
    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    prepare(params.active.data, Paths().cache_for("tiny"), None, workers=1)
    return "\n".join(dataset_section(params, Paths()))


def test_report_names_gray_and_colour_and_the_augmentations(workdir, tiny_params, digits,
                                                            colours):
    text = _section(workdir, tiny_params, digits, {"hflip": True})
    assert "8x8, 1 channel (gray), 3 classes" in text
    assert "Channels: data.channels auto, decided by content: R=G=B in all 33 images." in text
    aug = next(line for line in text.splitlines() if line.startswith("- Training augment"))
    assert FLIP_WHY in aug and "not used: translation, random-resized crop, colour jitter, " \
                               "grayscale." in aug
    text = _section(workdir, tiny_params, colours, {"hflip": False, "color_jitter": 0.4,
                                                    "grayscale_p": 0.2})
    assert "8x8, 3 channels (colour), 3 classes" in text
    assert "Channels: data.channels auto, colour: R, G, B differ in some image." in text
    assert "colour jitter 0.4 (turn off where colour or brightness decides the class)" in text
    assert "grayscale p=0.2 (turn off where colour decides the class)" in text
    assert FLIP_WHY not in text and "not used: flips, translation" in text
