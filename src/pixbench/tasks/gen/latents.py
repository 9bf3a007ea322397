"""`pixbench vq encode` (cached latents + their manifest) and `pixbench vq eval` (reconstruction).

Latents are the encoder's pre-quantisation output, as LDM trains its diffusion models on for
VQ-regularised autoencoders: the decoder quantises them, so the DiT may land anywhere near a
code. One scalar scale factor (1 / std of the training latents, LDM's `scale_factor`) brings
them to unit variance for the diffusion model; it is stored in the manifest.

Both run on the task runner. Encoding streams to disk (encode.py: straight from an ImageFolder
or from the memory-mapped cache, ranks writing disjoint rows); reconstruction is sharded across
ranks in fixed chunks (tokenizer.encode_sharded) and gathered to rank 0 only, which scores
(eval_images, bounded: its L1 is one float32 mean over every pixel, whose bits depend on
having them all in one tensor).
"""

from __future__ import annotations

import io
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pixbench import distributed
from pixbench.config import Paths
from pixbench.data.cache import quick_sha256, sha256_file
from pixbench.data.npyfile import data_offset
from pixbench.data.prepare import folder_root
from pixbench.data.subsets import balanced_subset
from pixbench.errors import UserError
from pixbench.eval.fidelity import fidelity_metrics
from pixbench.eval.refstats import fid_from_stats, stream_stats, tensor_batches
from pixbench.config import EncodeSpec, VQEvalSpec
from pixbench.models.vqgan import code_stats
from pixbench.runio import read_json
from pixbench.tasks.gen import encode as enc
from pixbench.tasks.gen.data import balanced_images, gen_cache
from pixbench.tasks.gen.featnet import featnet_path
from pixbench.tasks.gen.parallel import from_main
from pixbench.tasks.gen.reference import reference_stats
from pixbench.tasks.gen.tokenizer import TOKENIZER_DIR, WEIGHTS, encode_sharded, load_tokenizer
from pixbench.tasks.rundir import remove_run_dir
from pixbench.tasks.runner import Run
from pixbench.tasks.trainer import Once, run_task

LATENTS_MANIFEST = "latents.json"  # (manifest.json is the runner's run manifest)
RECON_IMAGES = 32


def tokenizer_dir(paths: Paths, profile: str, ref: dict) -> Path:
    return paths.run_dir(profile, ref["run_id"]) / TOKENIZER_DIR


def latents_dir(paths: Paths, profile: str, tokenizer_run_id: str) -> Path:
    return paths.run_dir(profile, f"{tokenizer_run_id}-latents")


def read_manifest(paths: Paths, profile: str, tokenizer: dict) -> dict:
    """The latents manifest of `tokenizer` ({run_id, digest}), checked against it."""
    path = latents_dir(paths, profile, tokenizer["run_id"]) / LATENTS_MANIFEST
    man = read_json(path, "latents manifest")
    if not isinstance(man, dict) or man.get("tokenizer_digest") != tokenizer["digest"]:
        raise UserError(f"{path}: latents of another tokenizer spec; re-run `pixbench vq encode`")
    bad = [k for k, ok in _MANIFEST_FIELDS.items() if not ok(man.get(k))]
    if bad:
        raise UserError(f"{path}: latents manifest without a valid {', '.join(bad)}; re-run "
                        "`pixbench vq encode`")
    return man


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# What the readers of a latents manifest use (dit, sampling, load_latents), checked once here:
# a hand-edited manifest is one line naming the field, not a KeyError mid-run.
_MANIFEST_FIELDS = {
    "scale_factor": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    and math.isfinite(v) and v > 0,
    "latent_shape": lambda v: isinstance(v, list) and len(v) == 3 and all(map(_positive_int, v)),
    "num_classes": _positive_int,
    "files": lambda v: isinstance(v, dict) and all(
        isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in v.values()),
}


def _drop_other_tokenizer(out: Path, weights: Path, root: Path) -> None:
    """Latents encoded by other tokenizer weights (same spec, retrained elsewhere) are never
    reused: the manifest names the weights by sha256; rank 0 discards a mismatching dir (only
    inside the runs dir `root`)."""
    man = out / LATENTS_MANIFEST
    if distributed.is_main() and man.exists() and weights.exists() and \
            read_json(man, "latents manifest").get("tokenizer_sha256") != sha256_file(weights):
        remove_run_dir(out, root)


def run_encode(spec: EncodeSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
               progress: bool = True) -> dict:
    """Encode (subsets of) both splits with the saved tokenizer, streamed to disk (encode.py);
    returns the manifest."""
    tok = tokenizer_dir(paths, spec.profile, spec.tokenizer)
    _drop_other_tokenizer(latents_dir(paths, spec.profile, spec.tokenizer["run_id"]), tok / WEIGHTS,
                          paths.runs_dir)

    def build(r: Run) -> Once:
        model = load_tokenizer(tok, expect_digest=spec.tokenizer["digest"]).to(r.device)
        source = _Source(spec, paths, model.config.in_channels)
        weights_sha = sha256_file(tok / WEIGHTS)
        return Once(lambda r, state: _encode(r, model, source, weights_sha, progress))

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress)


def _encode(r: Run, model, source, weights_sha: str, progress: bool) -> dict:
    """Both splits streamed into a temp dir, committed by rank 0; its manifest on every rank."""
    spec = r.spec
    with enc.nothing_half_written(r.dir):  # a full disk: one line, no latents left
        tmp = enc.fresh_tmp(r.dir)
        t0 = time.perf_counter()
        for split in ("train", "val"):
            n = len(source.idx[split])
            if r.is_main:
                enc.allocate(tmp, split, n, model, spec.data.image_size)
            distributed.barrier()
            rows = enc.my_rows(n)
            enc.encode_into(model, tmp, split, source.batches(split, rows), rows, r.device)
            if progress and r.is_main:
                print(f"{spec.run_id}: encoded {split} ({n} images)", file=sys.stderr,
                      flush=True)
        distributed.barrier()
        manifest = {}
        if r.is_main:
            manifest = _commit(spec, r, tmp, source, model, weights_sha,
                               time.perf_counter() - t0)
    return from_main(manifest)


def reads_folder(spec: EncodeSpec) -> bool:
    """Whether `vq encode` decodes the ImageFolder itself (else it reads the gen cache)."""
    return spec.data.source == "imagefolder"


class _Source:
    """The encoded rows of each split (class-balanced subsets) and their uint8 batches: from
    the ImageFolder (data.source: imagefolder) or from the memory-mapped gen cache."""

    def __init__(self, spec: EncodeSpec, paths: Paths, channels: int) -> None:
        self.size, self.channels, subset = spec.data.image_size, channels, spec.latents
        if reads_folder(spec):
            self.scans = enc.scan_folder(folder_root(spec.data, paths.data_root))
            self.classes = list(self.scans["train"].classes)
            self.labels = {s: fs.labels for s, fs in self.scans.items()}
        else:
            self.ds = gen_cache(paths, spec.profile, spec.data.model_dump())
            self.classes = self.ds.classes
            self.labels = {s: np.asarray(getattr(self.ds, f"{s}_labels")) for s in ("train", "val")}
        self.idx = {s: balanced_subset(self.labels[s], getattr(subset, f"{s}_subset"),
                                       len(self.classes)) for s in ("train", "val")}

    def batches(self, split: str, rows: range):
        if hasattr(self, "scans"):
            return enc.folder_chunks(self.scans[split], self.idx[split], rows, self.size,
                                     self.channels)
        return enc.array_chunks(getattr(self.ds, f"{split}_images"), self.idx[split], rows)


def _commit(spec: EncodeSpec, r: Run, tmp: Path, source: _Source, model, weights_sha: str,
            encode_s: float) -> dict:
    """Rank 0: labels, hashes, scale factor and code statistics, files into place, manifest."""
    files = {}
    for split in ("train", "val"):
        labels = source.labels[split][source.idx[split]]
        np.save(tmp / f"{split}_labels.npy", np.ascontiguousarray(labels))
        for kind in ("latents", "codes", "labels"):
            name = f"{split}_{kind}.npy"
            size = (tmp / name).stat().st_size  # the one full hash: here, where it is made
            files[name] = {"shape": list(np.load(tmp / name, mmap_mode="r").shape),
                           "sha256": sha256_file(tmp / name), "bytes": size,
                           "quick_sha256": quick_sha256(tmp / name, size)}
    stats = enc.codes_summary(tmp / "train_codes.npy", model.config.num_vq_embeddings)
    for name in files:
        os.replace(tmp / name, r.dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"run_id": spec.run_id, "task": spec.task,
                "tokenizer": spec.tokenizer["run_id"],
                "tokenizer_digest": spec.tokenizer["digest"], "tokenizer_sha256": weights_sha,
                "latent_shape": files["train_latents.npy"]["shape"][1:],
                "scale_factor": 1.0 / enc.latent_std(r.dir / "train_latents.npy"),
                "num_classes": len(source.classes), "classes": source.classes, "files": files,
                "train_codebook_usage": stats["codebook_usage"],
                "train_perplexity": stats["perplexity"],
                "encode_s": encode_s, "spec_digest": spec.digest()}
    r.write_json(LATENTS_MANIFEST, manifest)
    return manifest


def load_latents(paths: Paths, profile: str, tokenizer: dict, split: str, verify: bool = True,
                 full: bool = False, rows: bool = False) -> tuple:
    """(latents (N, c, h, w) float32, labels (N,), manifest) of one split, checked
    (check_latents_file), never read whole: 1.28M ImageNet latents are ~21 GB per rank.

    Tensors over copy-on-write memory maps of the files (a page is read when touched; nothing
    writes them, and a write would stay private, never reach the file); with `rows`, NpyRows
    readers instead, whose `[idx]` reads a batch's rows by pread (what the DiT trains from:
    NpyRows says why a training rank should not index a map)."""
    where = latents_dir(paths, profile, tokenizer["run_id"])
    man = read_manifest(paths, profile, tokenizer)
    out = []
    for kind in ("latents", "labels"):
        name = f"{split}_{kind}.npy"
        path = where / name
        info = man["files"].get(name, {})
        if verify:
            check_latents_file(path, info, full)
        arr = NpyRows(path) if rows else torch.from_numpy(np.load(path, mmap_mode="c"))
        if verify and list(arr.shape) != info.get("shape"):  # object arrays: refused above
            raise UserError(f"{path}: shape {list(arr.shape)} is not the latents manifest's "
                            f"{info.get('shape')}")
        out.append(arr)
    return out[0], out[1], man


def check_latents_file(path: Path, info: dict, full: bool = False) -> None:
    """What is checked against the latents manifest entry `info` (written once by rank 0 at
    encode, with the file's full sha256): its size, and its quick hash (data/cache.py: the
    whole file up to 64 MiB, else 64 spread blocks of 64 KiB), so every rank reads ~4 MiB
    on every start, not every byte. That catches truncation, a replaced or re-encoded file and
    most partial overwrites; the full sha256 is checked with `full` (an explicit verify), and
    for manifests from before the quick hash (no `bytes`/`quick_sha256`), as it always was."""
    if not path.is_file():
        raise UserError(f"{path}: missing; re-run `pixbench vq encode`")
    size = path.stat().st_size
    quick = "bytes" in info and "quick_sha256" in info and not full
    if quick and size != info["bytes"]:
        raise UserError(f"{path}: {size} bytes, the latents manifest says {info['bytes']} "
                        "(truncated or replaced; re-run `pixbench vq encode`)")
    ok = quick_sha256(path, size) == info["quick_sha256"] if quick \
        else sha256_file(path) == info.get("sha256")
    if not ok:
        raise UserError(f"{path}: missing or sha256 does not match the latents manifest")


class NpyRows:
    """A C-ordered .npy (N, ...) whose rows `rows[idx]` (idx a LongTensor) are read from disk by
    pread as a fresh tensor (len(idx), ...); `shape` is the file's, as torch.Size. The values
    are the file's bytes: the same as np.load's.

    What the DiT trains from (issue 26: ImageNet's train latents are ~21 GB, a rank draws a few
    hundred rows a step), rather than indexing an np.memmap: every page a map touches counts in
    the process's RSS, and the kernel maps far more than the row (on this machine's ext4, ~1.2
    MB per randomly indexed 4 KiB row: page-cache folios mapped whole), so within an epoch each
    rank's RSS would reach the whole file. Those pages are the page cache, one copy per node,
    but RSS cannot tell them from a private copy. pread uses the page cache the same way, and a
    rank's RSS holds its batch."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        arr = np.load(self.path, mmap_mode="r")  # header only; object arrays are refused here
        if arr.ndim < 1 or arr.dtype.hasobject or not arr.flags.c_contiguous:
            raise UserError(f"{path}: not a C-ordered numeric array")
        self.shape, self.dtype = torch.Size(arr.shape), arr.dtype
        self.row_bytes = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
        del arr  # the map is never read: rows come by pread
        self.offset = data_offset(self.path)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        rows = idx.tolist()
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)  # (b, ...)
        view, b = memoryview(out).cast("B"), self.row_bytes  # out's bytes, row after row
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k, i in enumerate(rows):
                if not 0 <= i < self.shape[0]:
                    raise IndexError(f"row {i} of {self.shape[0]} in {self.path}")
                _read_exactly(fd, view[k * b:(k + 1) * b], self.offset + i * b, self.path)
        finally:
            os.close(fd)
        return torch.from_numpy(out)


def _read_exactly(fd: int, buf: memoryview, pos: int, path: Path) -> None:
    """Fill `buf` from byte `pos` of `fd` (pread may return less than asked)."""
    while len(buf):
        n = os.preadv(fd, [buf], pos)
        if n == 0:
            raise UserError(f"{path}: ends before row data at byte {pos} (truncated)")
        buf, pos = buf[n:], pos + n


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of uint8 images (N, C, H, W), per image (peak 255)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)  # (N,)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def run_eval(spec: VQEvalSpec, paths: Paths, *, stale: str = "error", device: str = "auto",
             progress: bool = True) -> dict:
    """PSNR, L1, codebook usage / perplexity on val images, rFID (FeatNet) and the sanity FIDs;
    every rank returns rank 0's metrics."""

    def build(r: Run) -> Once:
        model = load_tokenizer(tokenizer_dir(paths, spec.profile, spec.tokenizer),
                               expect_digest=spec.tokenizer["digest"]).to(r.device)
        vq_spec = read_json(paths.run_dir(spec.profile, spec.tokenizer["run_id"]) / "spec.json",
                            "tokenizer spec")["spec"]
        ds = gen_cache(paths, spec.profile, vq_spec["data"])
        featnet_path(paths, spec.profile, spec.featnet)  # missing or corrupt: before any write
        return Once(lambda r, state: _evaluate(r, paths, model, vq_spec, ds))

    return run_task(spec, paths, build, stale=stale, device=device, progress=progress)


def _evaluate(r: Run, paths: Paths, model, vq_spec: dict, ds) -> dict:
    """reconstructions.npz and the metrics (rank 0's, on every rank)."""
    spec = r.spec
    n = min(spec.eval_images, ds.val_images.shape[0])
    images = np.asarray(ds.val_images[:n])  # (n, H, W, C) uint8
    t0 = time.perf_counter()
    # rec (n, C, H, W) and codes on rank 0 only, which scores them: no all-gather of images
    _, codes, rec = encode_sharded(model, images, r.device, decode=True, main_only=True)
    recon_s = time.perf_counter() - t0
    metrics = {}
    if r.is_main:
        orig = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # (n, C, H, W)
        psnr = psnr_per_image(orig, rec)
        l1 = (orig.float() - rec.float()).abs().mean() / 127.5  # [-1, 1] units of training
        metrics = {"run_id": spec.run_id, "task": spec.task,
                   "tokenizer": spec.tokenizer["run_id"],
                   "profile": spec.profile, "val_n": n, "psnr": float(psnr.mean()),
                   "psnr_std": float(psnr.std()), "l1": float(l1),
                   **code_stats(codes.long(), model.config.num_vq_embeddings),
                   "codebook_size": model.config.num_vq_embeddings,
                   **sanity_fids(spec, paths, vq_spec["data"], orig, rec),
                   "recon_img_per_s": n / recon_s, "spec_digest": spec.digest()}
        buf = io.BytesIO()
        np.savez(buf, original=orig[:RECON_IMAGES].numpy(),
                 reconstruction=rec[:RECON_IMAGES].numpy())
        r.write_bytes("reconstructions.npz", buf.getvalue())
    return from_main(metrics)


def sanity_fids(spec: VQEvalSpec, paths: Paths, data_spec: dict, orig: torch.Tensor,
                rec: torch.Tensor) -> dict:
    """rFID (reconstructions vs the images they reconstruct) and the sanity scale for sample
    FIDs: real val images and uniform noise against the samples' reference statistics, at the
    samples' count (FID is biased by n, so equal n keeps them comparable). Rank 0 only: it
    writes the reference statistics cache."""
    weights = featnet_path(paths, spec.profile, spec.featnet)
    out = {"rfid_featnet": fidelity_metrics(rec, orig, extractor="featnet", weights_path=weights,
                                            ref_cache_name=None, cache_root=None, isc=False,
                                            kid=False, prc=False)["fid_featnet"]}
    ref = reference_stats(paths, spec.profile, spec.fid, data_spec, "featnet", weights)
    val = balanced_images(gen_cache(paths, spec.profile, data_spec), "val", spec.sanity_samples)
    noise = torch.randint(0, 256, tuple(val.shape), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))  # (M, C, H, W)
    for name, images in (("fid_featnet_real_val", val), ("fid_featnet_noise", noise)):
        out[name] = fid_from_stats(
            stream_stats(tensor_batches(images, "featnet"), "featnet", weights), ref)
    out["sanity_n"] = int(val.shape[0])
    return out
