"""The report's dataset facts (from the prepared caches' manifests: channels and how they were
decided; the training augmentations in effect and when to turn each off) and which of the
paper's tables are about the profile's dataset: CIFAR-100 and ImageNet numbers are printed only
beside those datasets, never beside Fashion-MNIST or your own ImageFolder."""

from __future__ import annotations

from pathlib import Path

from pixbench.config import AugmentConfig, DataConfig, Params, Paths
from pixbench.runio import read_json

MAX_CLASS_NAMES = 20  # beyond this many, the list is cut (ImageNet has 1000)


def paper_dataset(data: DataConfig) -> str | None:
    """The paper's name of this dataset ("CIFAR-100", "ImageNet"), or None when the paper has
    no numbers on it. An ImageFolder counts as ImageNet when its root folder is named
    imagenet* (the imagenet28 profile's `root: imagenet`): the folder is all we can know."""
    if data.source == "cifar100":
        return "CIFAR-100"
    if data.source == "imagefolder" and data.root and \
            Path(data.root).name.lower().startswith("imagenet"):
        return "ImageNet"
    return None


def dataset_name(data: DataConfig) -> str:
    return f"ImageFolder `{data.root}`" if data.source == "imagefolder" else data.source


def manifest(cache_dir: Path) -> dict | None:
    path = cache_dir / "manifest.json"
    return read_json(path, "cache manifest") if path.exists() else None


def describe_cache(what: str, data: DataConfig, cache_dir: Path) -> list[str]:
    m = manifest(cache_dir)
    if m is None:
        return [f"- {what}: {dataset_name(data)} at {data.image_size}x{data.image_size} "
                f"(cache {cache_dir} not prepared: classes unknown)."]
    names = list(m.get("classes", []))
    shown = ", ".join(names[:MAX_CLASS_NAMES]) + (
        f", … ({len(names) - MAX_CLASS_NAMES} more)" if len(names) > MAX_CLASS_NAMES else "")
    counts = m.get("counts", {})
    channels = m.get("channels")
    return [f"- {what}: {dataset_name(data)}, {m['image_size']}x{m['image_size']}, "
            f"{channels} channel{'s' if channels != 1 else ''} "
            f"({'gray' if channels == 1 else 'colour'}), {m.get('num_classes', len(names))} "
            f"classes, {counts.get('train', '?'):,} train / {counts.get('val', '?'):,} val "
            f"images in the cache. Classes: {shown}. Channels: {how_channels(m)}."]


def how_channels(m: dict) -> str:
    """How the cache's channel count was decided (prepare.py, stream.finish): by params, by the
    pixels (`channels_from`, recorded only then), else under auto by the file mode (1) or a
    colour pixel found (3)."""
    asked = (m.get("spec") or {}).get("channels", "auto")
    if asked != "auto":
        return f"set by data.channels: {asked}"
    if m.get("channels_from"):
        return f"data.channels auto, decided by {m['channels_from']}"
    if m.get("channels") == 1:
        return "data.channels auto, decided by file mode: every image file is gray"
    return "data.channels auto, colour: R, G, B differ in some image"


def augment_line(aug: AugmentConfig, channels: int | None) -> str:
    """The training augmentations in effect, each with when to turn it off (a label it can
    change), and those not used: one bullet line."""
    on, off = [], []
    if aug.hflip:
        on.append("horizontal flips (turn off for digits and text: a flipped 2 or letter is "
                  "another symbol)")
    else:
        off.append("flips")
    if aug.crop_padding:
        on.append(f"translation by up to {aug.crop_padding} px (crop_padding; turn off when "
                  "the object fills the frame: a shift cuts part of it off)")
    else:
        off.append("translation")
    if aug.rrc_scale_min is not None:
        on.append(f"random-resized crop to ≥ {aug.rrc_scale_min:g} of the area (turn off where "
                  "size or a detail at the edge decides the class)")
    else:
        off.append("random-resized crop")
    if aug.color_jitter:
        only = "brightness and contrast only on 1 channel; " if channels == 1 else ""
        on.append(f"colour jitter {aug.color_jitter:g} ({only}turn off where colour or "
                  "brightness decides the class)")
    else:
        off.append("colour jitter")
    if aug.grayscale_p:
        why = "no effect: 1 channel" if channels == 1 else "turn off where colour decides " \
                                                           "the class"
        on.append(f"grayscale p={aug.grayscale_p:g} ({why})")
    else:
        off.append("grayscale")
    return (f"- Training augmentations (classify.augment): {'; '.join(on) or 'none'}"
            f"{'; not used: ' + ', '.join(off) if off else ''}.")


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def dataset_section(params: Params, paths: Paths) -> list[str]:
    prof = params.active
    c = prof.classify
    lines = ["## Dataset", ""]
    lines += describe_cache("Classification" + (" and MAE" if prof.mae is not None else ""),
                            prof.data, paths.cache_for(params.profile))
    lines += [f"- Classification trains on {c.train_subset or 'all'} of the train images and "
              f"reports top-1 on {c.val_subset or 'all'} val images."]
    m = manifest(paths.cache_for(params.profile))
    lines += [augment_line(c.augment, m.get("channels") if m else None)]
    if prof.gen is not None:
        lines += describe_cache("Generation", prof.gen.data, paths.gen_cache_for(params.profile))
    return lines + [""]


def not_about(table: str, data: DataConfig, about: str) -> list[str]:
    """The line that replaces a paper table whose dataset is not this profile's."""
    return [f"The paper's {table} numbers are on {about}; this profile's dataset "
            f"({dataset_name(data)}) is not, so they are not shown.", ""]
