"""The report's dataset facts (from the prepared caches' manifests) and which of the paper's
tables are about the profile's dataset: CIFAR-100 and ImageNet numbers are printed only beside
those datasets, never beside Fashion-MNIST or your own ImageFolder."""

from __future__ import annotations

from pathlib import Path

from pixbench.config import DataConfig, Params, Paths
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
            f"images in the cache. Classes: {shown}."]


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def dataset_section(params: Params, paths: Paths) -> list[str]:
    prof = params.active
    c = prof.classify
    lines = ["## Dataset", ""]
    lines += describe_cache("Classification and MAE", prof.data, paths.cache_for(params.profile))
    lines += [f"- Classification trains on {c.train_subset or 'all'} of the train images and "
              f"reports top-1 on {c.val_subset or 'all'} val images."]
    if prof.gen is not None:
        lines += describe_cache("Generation", prof.gen.data, paths.gen_cache_for(params.profile))
    return lines + [""]


def not_about(table: str, data: DataConfig, about: str) -> list[str]:
    """The line that replaces a paper table whose dataset is not this profile's."""
    return [f"The paper's {table} numbers are on {about}; this profile's dataset "
            f"({dataset_name(data)}) is not, so they are not shown.", ""]
