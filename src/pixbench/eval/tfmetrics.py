"""torch-fidelity's IS / FID / KID / precision-recall over features extracted here, with the
reference features cached in an .npz that is read without pickle.

Why not torch-fidelity's own cache: on a hit it `torch.load`s `<cache_root>/<name>-*.pt` with
weights_only=False, so a file planted under such a name ran its code on `dit eval` (issue 27).
Its cache stays off (cache=False, no cache names) and this module does what
`calculate_metrics_one_feature_extractor` does for one extractor: the same extractor
construction, the same batched extraction (`get_featuresdict_from_dataset`) and the same metric
functions, so the numbers are identical (tests/test_fidelity.py compares them with
calculate_metrics). The reference's features are cached, as before, and only those of the layers
the two-set metrics use: IS reads the generated set only.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from pixbench.errors import UserError
from pixbench.runio import atomic_write_bytes, load_arrays

METRICS = ("isc", "fid", "kid", "prc")


class UInt8Images(torch.utils.data.Dataset):
    """Items are uint8 (3, H, W), as torch-fidelity requires: gray is repeated to 3 channels.
    `images`: a uint8 (N, C, H, W) tensor, or rows read when indexed (the reference set,
    tasks/gen/reference.SplitImages: never all in memory)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 (N, 1|3, H, W) images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images = images.cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]  # (C, H, W)
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def _features(images: torch.Tensor, fe, kw: dict) -> dict[str, torch.Tensor]:
    """{layer: (N, D) float CPU tensor}, extracted as torch-fidelity extracts an input."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    return get_featuresdict_from_dataset(UInt8Images(images), fe, kw["batch_size"], kw["cuda"],
                                         kw["save_cpu_ram"], kw["verbose"])


def reference_features(reference: torch.Tensor, fe, kw: dict, layers: list[str],
                       cache: tuple[Path, dict] | None) -> dict[str, torch.Tensor]:
    """The reference's features of `layers`; with cache = (file, key), read from the file when
    its key matches (load_arrays: no pickle), else extracted and written there atomically. A
    file that is unreadable, holds objects or has another key is recomputed, never trusted."""
    if cache is not None:
        path, key = cache
        key_json = json.dumps(key, sort_keys=True)
        try:
            arrays = load_arrays(path, "reference features") if path.is_file() else {}
        except UserError:
            arrays = {}
        names = [f"features_{layer}" for layer in layers]
        if "key" in arrays and str(arrays["key"]) == key_json and all(n in arrays for n in names):
            return {layer: torch.from_numpy(arrays[n]) for layer, n in zip(layers, names)}
    feats = _features(reference, fe, kw)
    if cache is not None:
        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, key=np.array(key_json),
                 **{f"features_{layer}": feats[layer].numpy() for layer in layers})
        atomic_write_bytes(path, buf.getvalue())
    return feats


def _layers(kw: dict) -> tuple[dict, dict[str, str]]:
    """calculate_metrics' kwargs with torch-fidelity's cache off, and {metric: feature layer}
    of the metrics asked for."""
    from torch_fidelity.utils import resolve_feature_layer_for_metric

    kw = {**kw, "cache": False, "input1_cache_name": None, "input2_cache_name": None}
    return kw, {m: resolve_feature_layer_for_metric(m, **kw) for m in METRICS if kw.get(m)}


def _extractor(kw: dict, layers: dict[str, str]):
    from torch_fidelity.utils import create_feature_extractor

    return create_feature_extractor(kw["feature_extractor"], sorted(set(layers.values())), **kw)


def generated_features(generated: torch.Tensor, kw: dict) -> dict[str, torch.Tensor]:
    """{layer: (N, D)} of uint8 (N, C, H, W) images, every layer the metrics in `kw` read, as
    `calculate` extracts them: a rank extracts its own samples' features and hands `calculate`
    the features, not the images."""
    kw, layers = _layers(kw)
    return _features(generated, _extractor(kw, layers), kw) if layers else {}


def calculate(generated: torch.Tensor | dict[str, torch.Tensor], reference: torch.Tensor,
              kw: dict, cache: tuple[Path, dict] | None) -> dict[str, float]:
    """torch-fidelity's result dict for uint8 (N, C, H, W) generated vs reference images; `kw`
    are calculate_metrics' kwargs (isc, fid, kid, prc, feature_extractor, batch_size, cuda, ...),
    `cache` as in reference_features. `generated` may be its features already extracted
    (`generated_features` with the same kw; rows in the same order give the same numbers)."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric

    kw, layers = _layers(kw)
    if not layers:
        return {}
    fe = _extractor(kw, layers)
    f1 = generated if isinstance(generated, dict) else _features(generated, fe, kw)
    out = {}
    if "isc" in layers:
        out.update(isc_featuresdict_to_metric(f1, layers["isc"], **kw))
    binary = sorted({layers[m] for m in ("fid", "kid", "prc") if m in layers})
    if not binary:
        return out
    f2 = reference_features(reference, fe, kw, binary, cache)
    if "fid" in layers:
        stats = [fid_featuresdict_to_statistics(f, layers["fid"]) for f in (f1, f2)]
        out.update(fid_statistics_to_metric(*stats, verbose=False))
    if "kid" in layers:
        out.update(kid_featuresdict_to_metric(f1, f2, layers["kid"], **kw))
    if "prc" in layers:
        out.update(prc_featuresdict_to_metric(f1, f2, layers["prc"], **kw))
    return out
