"""Fixed upstream instruments of the generation track: the tokenizer the DiT cells train on and
the FeatNet ruler that scores them, committed under instruments/<profile>/ and checked by sha256
at every load.

Why: both are trained models, and training is not bitwise portable across CPU kinds (other GEMM
kernels, MKL's code path on AMD vs Intel). Retrained on every machine they moved every DiT cell
together: the same reconstructions scored by three FeatNet seeds gave rFID 13.6 / 17.2 / 10.6
and reordered the DiT patch sizes (issue 23). With both fixed, a DiT cell differs between
machines only by its own kernels. The paper does the same with a pretrained VQGAN, and
torch-fidelity pins Inception.

`pixbench instruments freeze` copies the profile's trained tokenizer (`vq train`) and FeatNet
(`featnet train`) into instruments/<profile>/ with PROVENANCE.json (run ids, spec digests, git,
machine, their metrics) and prints the params.yaml lines that pin them (`pretrained` with root
`instruments` and the sha256). Setting `pretrained: null` again retrains them (a stage a user
can run); a changed instrument changes the spec digest of every cell that uses it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pixbench.config import Params, Paths, Pretrained
from pixbench.data.cache import sha256_file
from pixbench.errors import UserError
from pixbench.runio import atomic_write_json, read_json, under_root

TOKENIZER = "tokenizer"          # a diffusers VQModel folder (as `vq train` saves it)
FEATNET = "featnet.pt"           # a `featnet train` checkpoint (weights_only format)
PROVENANCE = "PROVENANCE.json"
TOKENIZER_WEIGHTS = "diffusion_pytorch_model.safetensors"


def locate(pre: Pretrained, paths: Paths, field: str) -> Path:
    """The file or folder `pre` names, below its root; refused with one line naming `field`
    when the root is unset, the path leaves it, or it does not exist."""
    base = paths.instruments_dir if pre.root == "instruments" else paths.data_root
    p = Path(pre.path)
    if p.is_absolute():
        src = p
    elif base is None:
        raise UserError(f"{field}.path={pre.path} is relative but PIXBENCH_DATA_ROOT is not set")
    else:
        src = under_root(Path(base) / p, base) if pre.root == "instruments" else Path(base) / p
    if not src.exists():
        raise UserError(f"{field}.path: {src} does not exist")
    return src


def weights_file(src: Path) -> Path:
    """The file a pinned sha256 covers: the weights inside a diffusers folder, else `src`."""
    return src / TOKENIZER_WEIGHTS if src.is_dir() else src


def check_pinned(pre: Pretrained, src: Path, field: str) -> None:
    """Refuse weights whose sha256 is not the pinned one (a swapped or corrupt instrument)."""
    if pre.sha256 is None:
        return
    wf = weights_file(src)
    if not wf.is_file():
        raise UserError(f"{field}.path: {wf} is missing")
    got = sha256_file(wf)
    if got != pre.sha256:
        raise UserError(f"{wf}: sha256 {got[:12]}... is not {field}.sha256 {pre.sha256[:12]}... "
                        "(a changed instrument: re-pin it with `pixbench instruments freeze`)")


def freeze(params: Params, paths: Paths) -> dict:
    """Copy the profile's trained tokenizer and FeatNet into instruments/<profile>/ (a temp
    folder renamed into place: never half-written); return the pins and the provenance."""
    from pixbench.config import make_featnet_spec, make_vq_spec
    from pixbench.runio import git_state

    vq, fn = make_vq_spec(params), make_featnet_spec(params)
    if vq.vq.pretrained is not None or fn.featnet.pretrained is not None:
        raise UserError(f"profiles.{params.profile}.gen: vq.pretrained / featnet.pretrained are "
                        "set; set both to null and run `vq train` and `featnet train` first")
    runs = {"tokenizer": (vq, paths.run_dir(params.profile, vq.run_id)),
            "featnet": (fn, paths.run_dir(params.profile, fn.run_id))}
    sources = {"tokenizer": runs["tokenizer"][1] / TOKENIZER,
               "featnet": runs["featnet"][1] / FEATNET}
    prov = {"profile": params.profile, "frozen_at_git": git_state(), "instruments": {}}
    for name, (spec, run_dir) in runs.items():
        m = run_dir / "metrics.json"
        if not m.is_file() or not sources[name].exists():
            raise UserError(f"{run_dir}: no finished run to freeze (run `pixbench "
                            f"{'vq' if name == 'tokenizer' else 'featnet'} train` first)")
        metrics = read_json(m, "metrics")
        if metrics.get("spec_digest") != spec.digest():
            raise UserError(f"{m}: made with other settings than params.yaml (spec digest)")
        man = run_dir / "manifest.json"
        prov["instruments"][name] = {
            "path": TOKENIZER if name == "tokenizer" else FEATNET, "run_id": spec.run_id,
            "spec_digest": spec.digest(), "spec": spec.canonical(), "metrics": metrics,
            "manifest": read_json(man, "manifest") if man.is_file() else {},
            "sha256": sha256_file(weights_file(sources[name]))}
    dest = Path(paths.instruments_dir) / params.profile
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(sources["tokenizer"], tmp / TOKENIZER)
        shutil.copy2(sources["featnet"], tmp / FEATNET)
        atomic_write_json(tmp / PROVENANCE, prov)
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return prov


def pins(prov: dict) -> str:
    """The params.yaml lines that pin the frozen instruments (profiles.<p>.gen)."""
    t, f = prov["instruments"]["tokenizer"], prov["instruments"]["featnet"]
    return (f"vq:\n  pretrained: {{path: {prov['profile']}/{t['path']}, format: diffusers, "
            f"root: instruments, sha256: {t['sha256']}}}\n"
            f"featnet:\n  pretrained: {{path: {prov['profile']}/{f['path']}, "
            f"root: instruments, sha256: {f['sha256']}}}")
