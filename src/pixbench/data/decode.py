"""One image file -> its centre-cropped, resized uint8 pixels (the ImageFolder decode), gray
detection from the pixels, and the channel conversion every source shares. Pure functions of
a path or an array: worker processes, SLURM array tasks and the generation track's JPEG
streaming call them."""

from __future__ import annotations

import math
import warnings

import numpy as np

MAX_PIXELS = 89_478_485  # PIL's default MAX_IMAGE_PIXELS, enforced even where PIL's is turned off
SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
GRAY_MODES = frozenset({"1", "L", "LA", "La"}) | SIXTEEN_BIT
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


# ------------------------------------------------------------------------ ImageFolder decoding


def to_8bit(im):
    """Any PIL image -> 8-bit "L" (gray modes) or "RGB" (everything else: P, CMYK, YCbCr...).

    16-bit gray (I;16*, and I: PIL's mode for 16-bit PNGs in some versions and for integer
    TIFFs, clipped to 0..65535) is scaled by 1/257, rounded: 65535 -> 255 and 257*v -> v, the
    inverse of how 8-bit values widen to 16. PIL's convert("L") clips instead, turning a
    0..65535 ramp nearly white.
    Transparency (RGBA, LA, PA, a palette or tRNS transparency) is composited onto white, what
    a viewer shows on a page: dropping alpha would expose the colours stored under fully
    transparent pixels (often black, sometimes editing leftovers) that nobody saw when labelling.
    """
    from PIL import Image

    if im.mode in SIXTEEN_BIT:
        a = np.clip(np.asarray(im, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(a).astype(np.uint8))
    if im.mode == "F":
        raise ValueError("32-bit float pixels (mode F) have no fixed range to map onto 8 bits")
    gray = im.mode in GRAY_MODES
    if im.mode not in ALPHA_MODES and "transparency" not in im.info:
        mode = "L" if gray else "RGB"
        return im if im.mode == mode else im.convert(mode)  # convert to its own mode only copies
    a = np.asarray(im.convert("LA" if gray else "RGBA"), dtype=np.float64)
    alpha = a[..., -1:] / 255.0
    out = np.round(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return Image.fromarray(out[..., 0] if gray else out)


def _crop_resize(im, size: int) -> np.ndarray:
    """Centre-crop the largest square, then resize with antialiasing (ImageNet 28x28 in the
    paper); (size, size, 1) for an "L" image, (size, size, 3) for "RGB"."""
    from PIL import Image

    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC,
                                                        reducing_gap=None)
    a = np.asarray(im, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def decode_file(job: tuple[str, int], draft: float | None = None
                ) -> tuple[np.ndarray | None, str | None]:
    """One image file -> (its crop, None), or (None, why it cannot be decoded). The crop is
    (size, size, 1) when it is gray by its pixels (gray_if_equal: a gray file, or gray content
    saved as RGB, as many digit and scan sets are), else (size, size, 3).
    draft (data.fast_decode): JPEGs decode at the smallest DCT scale whose short side stays
    >= draft * size; None decodes every pixel."""
    from PIL import Image

    path, size = job
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit: a bomb must be an error
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ValueError(f"{im.width}x{im.height} pixels exceeds {MAX_PIXELS} "
                                     "(decompression bomb?)")
                if draft is not None and im.format == "JPEG":
                    side = math.ceil(draft * size)  # draft keeps both sides >= this
                    im.draft(None, (side, side))
                im.load()  # decode every byte now: truncated or corrupt data fails here
                return gray_if_equal(_crop_resize(to_8bit(im), size)), None
    except Exception as exc:  # noqa: BLE001 - whatever fails decoding a file is that file's fault
        return None, _why(exc)


def _why(exc: Exception) -> str:
    """Why a file did not decode, without repeating its path (the message starts with it)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image PIL can identify: empty, truncated header, text or unknown format"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # FileNotFoundError (broken symlink), PermissionError...
    return f"{exc.__class__.__name__}: {exc}"


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N, H, W, 1|3) -> (N, H, W, channels): gray replicated, or colour to luma with
    PIL's "L" formula (ITU-R 601-2, fixed point: (19595 R + 38470 G + 7471 B + 2^15) >> 16;
    Pillow src/libImaging/Convert.c), so a gray image stored as RGB comes back exactly."""
    have = images.shape[3]
    if have == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=3)
    x = images.astype(np.uint32)
    y = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return y.astype(np.uint8)[..., None]


# ------------------------------------------------------------------------ gray by content


def gray_if_equal(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) whose every pixel has R == G == B -> its (H, W, 1) first channel; anything
    else unchanged. Exact: to_channels' luma of three equal values is that value, so the one
    channel is what `channels: 1` stores and replicating it gives the RGB pixels back. Checked
    on the resized crop (what the cache holds): the resize treats each channel alike, so a
    gray file stays gray."""
    if img.shape[-1] == 3 and is_gray(img[None]):
        return np.ascontiguousarray(img[..., :1])
    return img


def is_gray(images: np.ndarray, chunk: int = 1024) -> bool:
    """Whether every pixel of uint8 (N, H, W, 1|3) images has R == G == B (1 channel: yes).
    Row chunks: a comparison never needs a full-size temporary, and the first colour chunk
    answers (CIFAR: its first one)."""
    if images.shape[-1] == 1:
        return True
    for i in range(0, images.shape[0], chunk):
        x = np.asarray(images[i:i + chunk])
        if not ((x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()):
            return False
    return True


def by_pixels(n: int) -> dict:
    """The manifest entry of a channel count the pixels decided (data.channels auto, all of
    the n images gray). Only then: `channels: 1|3` stands in the manifest's spec, 3 under auto
    means a colour pixel was found, and 1 by file mode (Fashion-MNIST) needs no entry, so the
    caches of the built-in sources keep their manifest bytes."""
    return {"channels_from": f"content: R=G=B in all {n} images"}
