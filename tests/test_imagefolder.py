"""ImageFolder decoding on generated files: every PIL mode lands on the right 8-bit values,
gray trees stay one channel, unreadable files are named (or left out on request)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pixbench.data import stream
from pixbench.data.cache import load_cache
from pixbench.data.prepare import decode_file, prepare
from pixbench.data.sources import scan_image_folder
from pixbench.errors import UserError


def crop(im: Image.Image, tmp_path, name: str = "x.png", size: int | None = None) -> np.ndarray:
    """Save `im`, decode it as prepare does (no resize unless size), return (H, W, C) uint8."""
    path = tmp_path / name
    im.save(path)
    arr, why = decode_file((str(path), size or im.width))
    assert why is None, why
    return arr


def bomb_png(w: int, h: int) -> bytes:
    """A PNG header claiming w x h pixels: PIL's bomb check runs on open, before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    ramp[0, :4] = [0, 257, 257 * 128, 65535]  # 257*v must come back as v exactly
    im = Image.fromarray(ramp)
    assert im.mode == "I;16"
    out = crop(im, tmp_path)
    assert out.shape == (64, 64, 1)
    assert out[0, :4, 0].tolist() == [0, 1, 128, 255]
    assert abs(out.mean() - 127.5) < 1.0  # PIL's convert("L") gave ~250: clipped


def test_32bit_int_mode_i_is_read_as_16bit(tmp_path):
    a = np.array([[0, 257, 65535, 70000]] * 4, dtype=np.int32)  # above 65535: clipped to 255
    out = crop(Image.fromarray(a), tmp_path, "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert out[0, :, 0].tolist() == [0, 1, 255, 255]


def test_float_mode_f_is_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    arr, why = decode_file((str(tmp_path / "f.tif"), 4))
    assert arr is None and "mode F" in why


def test_palette_bilevel_and_cmyk_become_exact_rgb_or_gray(tmp_path):
    p = Image.new("P", (4, 4))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    out = crop(p, tmp_path, "p.png")
    assert out.shape == (4, 4, 3) and out[0, 0].tolist() == [0, 0, 255] and out[1, 1].tolist() == [255, 0, 0]
    bw = Image.new("1", (4, 4), 1)
    assert crop(bw, tmp_path, "b.png").reshape(-1).tolist() == [255] * 16
    cmyk = Image.new("CMYK", (4, 4), (255, 0, 0, 0))  # pure cyan
    assert crop(cmyk, tmp_path, "c.tif")[0, 0].tolist() == [0, 255, 255]
    jpg = crop(cmyk, tmp_path, "c.jpg")  # CMYK JPEG: lossy, but cyan stays cyan
    assert jpg.shape == (4, 4, 3) and jpg[..., 0].max() < 20 and jpg[..., 1:].min() > 235


def test_alpha_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black everywhere...
    rgba[0, 0] = [255, 0, 0, 128]  # ...but one half-transparent red pixel
    out = crop(Image.fromarray(rgba), tmp_path, "a.png")
    assert out.shape == (4, 4, 3)
    assert out[1, 1].tolist() == [255, 255, 255]  # not the black stored under alpha 0
    assert out[0, 0].tolist() == [255, 127, 127]  # 255*(1-128/255) = 126.99...
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]] * 2, np.uint8), "LA")
    assert crop(la, tmp_path, "la.png")[0, :, 0].tolist() == [255, 0]  # gray stays 1 channel
    p = Image.new("P", (2, 2))
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.putpixel((1, 1), 1)
    p.info["transparency"] = 0
    assert crop(p, tmp_path, "pt.png")[0].tolist() == [[255, 255, 255], [10, 20, 30]]


def _tree(root, images: dict[str, dict[str, list[Image.Image]]]) -> None:
    for split, classes in images.items():
        for cls, ims in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i, im in enumerate(ims):
                im.save(root / split / cls / f"{i}.png")


def _gray(v):
    return Image.new("L", (6, 6), v)


def _rgb(c):
    return Image.new("RGB", (6, 6), c)


def Cfg(root: str, skip_corrupt: bool = False, channels="auto", fast_decode=None):
    """An ImageFolder data section of 4x4 images."""
    from pixbench.config import DataConfig

    return DataConfig(source="imagefolder", image_size=4, root=root, allow_download=False,
                      skip_corrupt=skip_corrupt, channels=channels, fast_decode=fast_decode)


def _prepared(tmp_path, name: str, split: dict, **cfg):
    """Prepare a tree whose train and val splits are both `split`; return the cache."""
    _tree(tmp_path / name, {"train": split, "val": split})
    prepare(Cfg(root=str(tmp_path / name), **cfg), tmp_path / f"{name}-cache", None)
    return load_cache(tmp_path / f"{name}-cache")


def test_gray_tree_keeps_one_channel_and_a_mix_gets_three(tmp_path):
    gray = _prepared(tmp_path, "g", {"a": [_gray(10)], "b": [_gray(200)]})
    assert gray.train_images.shape == (2, 4, 4, 1)
    mixed = _prepared(tmp_path, "m", {"a": [_gray(10)], "b": [_rgb((1, 2, 3))]}).train_images
    assert mixed.shape == (2, 4, 4, 3)
    assert (mixed[0] == 10).all() and mixed[1, 0, 0].tolist() == [1, 2, 3]


def test_channels_1_keeps_gray_saved_as_rgb_gray_and_3_replicates(tmp_path):
    """data.channels (issue 17): a gray dataset stored as RGB files stays 1 channel; colour
    becomes PIL's luma; channels 3 replicates a gray tree."""
    tree = {"a": [_rgb((40, 40, 40))], "b": [_rgb((200, 10, 30))]}
    one = _prepared(tmp_path, "one", tree, channels=1).train_images
    luma = np.asarray(_rgb((200, 10, 30)).convert("L"))[0, 0]
    assert one.shape == (2, 4, 4, 1) and (one[0] == 40).all() and (one[1] == luma).all()
    assert _prepared(tmp_path, "auto", tree).channels == 3
    three = _prepared(tmp_path, "three", {"a": [_gray(7)], "b": [_gray(9)]}, channels=3)
    assert three.train_images.shape == (2, 4, 4, 3) and (three.train_images[0] == 7).all()
    with pytest.raises(ValueError, match="channels"):
        Cfg(root="x", channels=2)


def test_gray_train_with_colour_val_gives_both_three_channels(tmp_path):
    _tree(tmp_path / "t", {"train": {"a": [_gray(50)], "b": [_gray(60)]},
                           "val": {"a": [_rgb((9, 8, 7))], "b": [_gray(70)]}})
    m = prepare(Cfg(root=str(tmp_path / "t")), tmp_path / "cache", None)
    assert m["channels"] == 3 and m["counts"] == {"train": 2, "val": 2}
    assert "skipped" not in m


def test_hidden_files_and_folders_are_not_images(tmp_path):
    _tree(tmp_path / "h", {"train": {"a": [_gray(1)], ".ipynb_checkpoints": [_gray(2)]}})
    (tmp_path / "h" / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "h" / "train" / "a" / ".hidden").mkdir()
    (tmp_path / "h" / "train" / "a" / ".hidden" / "x.png").write_bytes(b"junk")
    (tmp_path / "h" / "train" / "a" / "notes.txt").write_text("not an image")
    fs = scan_image_folder(tmp_path / "h", "train")
    assert fs.classes == ("a",) and [f.rsplit("/", 1)[1] for f in fs.files] == ["0.png"]


def test_skip_corrupt_leaves_files_out_and_records_them(tmp_path):
    _tree(tmp_path / "s", {"train": {"a": [_gray(1), _gray(2)], "b": [_gray(3)]},
                           "val": {"a": [_gray(4)], "b": [_gray(5)]}})
    (tmp_path / "s" / "train" / "a" / "1.png").write_bytes(b"truncated")
    with pytest.raises(UserError, match=r"train/a/1.png: cannot decode image .*skip_corrupt: true"):
        prepare(Cfg(root=str(tmp_path / "s"), skip_corrupt=False), tmp_path / "c1", None)
    m = prepare(Cfg(root=str(tmp_path / "s"), skip_corrupt=True), tmp_path / "c2", None)
    assert m["counts"]["train"] == 2 and m["skipped"]["train"][0].endswith("train/a/1.png")
    (tmp_path / "s" / "train" / "b" / "0.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"no readable images left in class folders b"):
        prepare(Cfg(root=str(tmp_path / "s"), skip_corrupt=True), tmp_path / "c3", None)
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c3").exists()


def _ramp_tree(root, n: int, bad_at: tuple[int, ...] = (), die_at: int | None = None) -> None:
    """n copies of one 8x8 gray ramp in class a of both splits; broken or `die` files at the
    given positions of train."""
    ramp = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        for i in range(n if split == "train" else 1):
            path = root / split / "a" / f"{i:04d}.png"
            if split == "train" and i in bad_at:
                path.with_name(f"{i:04d}bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
            elif split == "train" and i == die_at:
                path.with_name(f"{i:04d}die.png").write_bytes(b"")
            else:
                ramp.save(path)


def test_worker_pool_names_the_bad_file_and_keeps_order(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)  # 16-image chunks: many jobs for 2 workers
    _ramp_tree(tmp_path / "t", 300)
    cfg = Cfg(root=str(tmp_path / "t")).model_copy(update={"image_size": 8})
    prepare(cfg, tmp_path / "c", None, workers=2)
    out = load_cache(tmp_path / "c").train_images
    assert out.shape == (300, 8, 8, 1) and (out == out[0]).all()
    _ramp_tree(tmp_path / "b", 302, bad_at=(150, 151))
    cfg = Cfg(root=str(tmp_path / "b")).model_copy(update={"image_size": 8})
    with pytest.raises(UserError, match=r"0150bad.png: cannot decode image .*; 1 more unreadable"):
        prepare(cfg, tmp_path / "c2", None, workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c", "t"]  # no work dir left


def test_bomb_is_refused_even_with_pils_limit_turned_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    (tmp_path / "bomb.png").write_bytes(bomb_png(10_000, 10_000))
    arr, why = decode_file((str(tmp_path / "bomb.png"), 8))
    assert arr is None and "10000x10000 pixels exceeds" in why


def _dies_on_die_png(job, draft=None):
    """A decoder that crashes hard (as on a file that segfaults PIL): no exception to catch."""
    import os

    if job[0].endswith("die.png"):
        os._exit(1)
    return decode_file(job, draft)


def test_a_crashed_decoder_process_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)
    _ramp_tree(tmp_path / "t", 301, die_at=200)
    monkeypatch.setattr(stream, "decode_file", _dies_on_die_png)  # workers fork: inherited
    with pytest.raises(UserError, match="an image decoding process died"):
        prepare(Cfg(root=str(tmp_path / "t")), tmp_path / "c", None, workers=2)
