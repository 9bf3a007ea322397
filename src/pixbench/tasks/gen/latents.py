"""`pixbench vq encode` (cached latents + manifest) and `pixbench vq eval` (reconstruction).

Latents are the encoder's pre-quantisation output, as LDM trains its diffusion models on for
VQ-regularised autoencoders: the decoder quantises them, so the DiT may land anywhere near a
code. One scalar scale factor (1 / std of the training latents, LDM's `scale_factor`) brings
them to unit variance for the diffusion model; it is stored in the manifest.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from pixbench.config import Paths
from pixbench.data.cache import sha256_file
from pixbench.errors import UserError
from pixbench.genconfig import EncodeSpec, VQEvalSpec
from pixbench.runio import atomic_write_bytes, atomic_write_json, describe_run, read_json
from pixbench.tasks.tokenizer import WEIGHTS, decode_latents, encode_images, load_tokenizer
from pixbench.tasks.vq import TOKENIZER_DIR, gen_cache

LATENTS_MANIFEST = "manifest.json"
RECON_IMAGES = 32


def tokenizer_dir(paths: Paths, profile: str, ref: dict) -> Path:
    return paths.run_dir(profile, ref["run_id"]) / TOKENIZER_DIR


def latents_dir(paths: Paths, profile: str, tokenizer_run_id: str) -> Path:
    return paths.run_dir(profile, f"{tokenizer_run_id}-latents")


def _save_npy(path: Path, arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    atomic_write_bytes(path, buf.getvalue())
    return sha256_file(path)


def run_encode(spec: EncodeSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
               progress: bool = True) -> dict:
    """Encode (subsets of) both splits with the saved tokenizer; the manifest names the
    tokenizer's weights by sha256, so latents of another tokenizer are never reused."""
    from pixbench.models.vqgan import code_stats
    from pixbench.tasks.classify import balanced_subset

    tok = tokenizer_dir(paths, spec.profile, spec.tokenizer)
    model = load_tokenizer(tok, expect_digest=spec.tokenizer["digest"])
    out = latents_dir(paths, spec.profile, spec.tokenizer["run_id"])
    ds = gen_cache(paths, spec.profile, spec.data.model_dump())
    weights_sha = sha256_file(tok / WEIGHTS)
    if (out / LATENTS_MANIFEST).exists():
        old = read_json(out / LATENTS_MANIFEST, "latents manifest")
        if old.get("tokenizer_sha256") == weights_sha and old.get("spec_digest") == spec.digest():
            return old
    t0 = time.perf_counter()
    files, stats = {}, {}
    for split in ("train", "val"):
        labels = np.asarray(getattr(ds, f"{split}_labels"))
        idx = balanced_subset(labels, getattr(spec.latents, f"{split}_subset"), len(ds.classes))
        lat, codes = encode_images(model, np.asarray(getattr(ds, f"{split}_images")[idx]))
        for kind, arr in (("latents", lat), ("codes", codes), ("labels", labels[idx])):
            name = f"{split}_{kind}.npy"
            files[name] = {"shape": list(arr.shape), "sha256": _save_npy(out / name, arr)}
        stats[split] = code_stats(torch.from_numpy(codes).long(), model.config.num_vq_embeddings)
        if split == "train":
            scale = float(1.0 / lat.std())
        if progress:
            print(f"{spec.run_id}: encoded {split} {lat.shape}", flush=True)
    manifest = {"run_id": spec.run_id, "task": "vq-encode", "tokenizer": spec.tokenizer["run_id"],
                "tokenizer_digest": spec.tokenizer["digest"], "tokenizer_sha256": weights_sha,
                "latent_shape": list(lat.shape[1:]), "scale_factor": scale,
                "num_classes": len(ds.classes), "classes": ds.classes, "files": files,
                "train_codebook_usage": stats["train"]["codebook_usage"],
                "train_perplexity": stats["train"]["perplexity"],
                "encode_s": time.perf_counter() - t0, "spec_digest": spec.digest()}
    atomic_write_json(out / LATENTS_MANIFEST, manifest)
    return manifest


def load_latents(paths: Paths, profile: str, tokenizer: dict, split: str,
                 verify: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(latents (N, c, h, w) float32, labels (N,), manifest) of one split, checked."""
    where = latents_dir(paths, profile, tokenizer["run_id"])
    man = read_json(where / LATENTS_MANIFEST, "latents manifest")
    if man.get("tokenizer_digest") != tokenizer["digest"]:
        raise UserError(f"{where / LATENTS_MANIFEST}: latents of another tokenizer spec; re-run "
                        "`pixbench vq encode`")
    out = []
    for kind in ("latents", "labels"):
        name = f"{split}_{kind}.npy"
        path = where / name
        if verify and (not path.is_file() or sha256_file(path) != man["files"][name]["sha256"]):
            raise UserError(f"{path}: missing or sha256 does not match the latents manifest")
        out.append(torch.from_numpy(np.load(path)))
    return out[0], out[1], man


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of uint8 images (N, C, H, W), per image (peak 255)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def run_eval(spec: VQEvalSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
             progress: bool = True) -> dict:
    """PSNR, L1, codebook usage / perplexity on val images, rFID (FeatNet) and a grid."""
    from pixbench.models.vqgan import code_stats
    from pixbench.tasks.classify import open_run_dir

    run_dir = paths.run_dir(spec.profile, spec.run_id)
    done = open_run_dir(run_dir, spec, stale)
    if done is not None:
        return done
    model = load_tokenizer(tokenizer_dir(paths, spec.profile, spec.tokenizer),
                           expect_digest=spec.tokenizer["digest"])
    vq_spec = read_json(paths.run_dir(spec.profile, spec.tokenizer["run_id"]) / "spec.json",
                        "tokenizer spec")["spec"]
    ds = gen_cache(paths, spec.profile, vq_spec["data"])
    describe_run(run_dir, spec, 0, "cpu")
    n = min(spec.eval_images, ds.val_images.shape[0])
    images = np.asarray(ds.val_images[:n])
    t0 = time.perf_counter()
    lat, codes = encode_images(model, images)
    rec = decode_latents(model, torch.from_numpy(lat))  # (n, C, H, W) uint8
    recon_s = time.perf_counter() - t0
    orig = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
    psnr = psnr_per_image(orig, rec)
    l1 = (orig.float() - rec.float()).abs().mean() / 127.5  # in the [-1, 1] units of training
    fid = sanity_fids(spec, paths, vq_spec["data"], orig, rec)
    metrics = {"run_id": spec.run_id, "task": "vq-eval", "tokenizer": spec.tokenizer["run_id"],
               "profile": spec.profile, "val_n": n, "psnr": float(psnr.mean()),
               "psnr_std": float(psnr.std()), "l1": float(l1),
               **code_stats(torch.from_numpy(codes).long(), model.config.num_vq_embeddings),
               "codebook_size": model.config.num_vq_embeddings,
               **fid, "recon_img_per_s": n / recon_s,
               "spec_digest": spec.digest()}
    buf = io.BytesIO()
    np.savez(buf, original=orig[:RECON_IMAGES].numpy(), reconstruction=rec[:RECON_IMAGES].numpy())
    atomic_write_bytes(run_dir / "reconstructions.npz", buf.getvalue())
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics


def sanity_fids(spec: VQEvalSpec, paths: Paths, data_spec: dict, orig: torch.Tensor,
                rec: torch.Tensor) -> dict:
    """rFID (reconstructions vs the images they reconstruct) and the sanity scale for sample
    FIDs: real val images and uniform noise against the samples' reference, at the samples'
    count (FID is biased by n, so equal n keeps them comparable)."""
    from pixbench.eval.fidelity import fidelity_metrics
    from pixbench.tasks.classify import balanced_subset
    from pixbench.tasks.featnet import featnet_path, reference_cache_name, reference_images
    from pixbench.tasks.vq import gen_cache

    weights = featnet_path(paths, spec.profile, spec.featnet)
    kw = dict(extractor="featnet", weights_path=weights, isc=False, kid=False, prc=False)
    out = {"rfid_featnet": fidelity_metrics(rec, orig, ref_cache_name=None, cache_root=None,
                                            **kw)["fid_featnet"]}
    ref = reference_images(paths, spec.profile, spec.fid, data_spec)
    cache = {"ref_cache_name": reference_cache_name(spec.profile, spec.fid, spec.featnet),
             "cache_root": paths.cache_dir / "fidelity"}
    ds = gen_cache(paths, spec.profile, data_spec)
    idx = balanced_subset(np.asarray(ds.val_labels), spec.sanity_samples, len(ds.classes))
    val = torch.from_numpy(np.ascontiguousarray(ds.val_images[idx])).permute(0, 3, 1, 2)
    noise = torch.randint(0, 256, tuple(val.shape), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    out["fid_featnet_real_val"] = fidelity_metrics(val, ref, **cache, **kw)["fid_featnet"]
    out["fid_featnet_noise"] = fidelity_metrics(noise, ref, **cache, **kw)["fid_featnet"]
    out["sanity_n"] = int(val.shape[0])
    return out
