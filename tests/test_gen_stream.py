"""Generation at scale: `vq encode` straight from a JPEG ImageFolder equals encoding its cache,
streamed writes equal the in-memory encoder, streamed FID statistics equal the batch formula,
and the reference statistics cache is keyed by data and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pixbench.config import Paths, load_params, make_encode_spec, make_vq_spec
from pixbench.eval import refstats
from pixbench.eval.fidelity import feature_stats

SIZE = 16


def jpeg_tree(root: Path, per_class: dict[str, int], seed: int) -> None:
    """root/{train,val}/<class>/*.jpg: smooth colour blobs of varied sizes (some gray)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, cls in enumerate(("cats", "dogs")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(18, 40, 2)
                yy, xx = np.mgrid[0:h, 0:w]
                img = 120 + 100 * np.sin(xx / (3 + c) + rng.uniform(0, 6))[..., None] * \
                    rng.uniform(0.3, 1, 3) + rng.normal(0, 8, (h, w, 3))
                im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
                (im.convert("L") if i % 7 == 0 else im).save(d / f"{i:03d}.jpg", quality=90)


@pytest.fixture
def folder_project(gen_project: Path, workdir: Path) -> Path:
    """The tiny gen project with its gen data an ImageFolder of 40 JPEGs (2 classes), also
    prepared as the gen cache, and a trained tiny tokenizer."""
    import yaml

    from pixbench.config import DataConfig
    from pixbench.data.prepare import prepare
    from pixbench.tasks.gen import vq

    jpeg_tree(workdir / "jpegs", {"train": 14, "val": 6}, seed=0)
    raw = yaml.safe_load(gen_project.read_text())
    data = {"source": "imagefolder", "image_size": SIZE, "root": str(workdir / "jpegs"),
            "allow_download": False, "skip_corrupt": False, "channels": "auto",
            "fast_decode": None}
    raw["profiles"]["tiny"]["gen"]["data"] = data
    gen_project.write_text(yaml.safe_dump(raw, sort_keys=False))
    prepare(DataConfig(**data), workdir / "data" / "tiny-gen", None)
    vq.run(make_vq_spec(load_params(gen_project)), Paths(), progress=False)
    return gen_project


def _encode(params, monkeypatch: pytest.MonkeyPatch, from_folder: bool) -> tuple[dict, Path]:
    from pixbench.tasks.gen import latents

    monkeypatch.setattr(latents, "reads_folder", lambda spec: from_folder)
    spec, paths = make_encode_spec(params), Paths()
    out = latents.run_encode(spec, paths, stale="restart", progress=False)
    return out, paths.run_dir(spec.profile, spec.run_id)


def test_encode_from_jpegs_equals_encode_from_cache(folder_project: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from pixbench.data.cache import load_cache
    from pixbench.tasks.gen.tokenizer import encode_images, load_tokenizer

    params = load_params(folder_project)
    folder, run_dir = _encode(params, monkeypatch, from_folder=True)
    files = {p.name: p.read_bytes() for p in run_dir.glob("*.npy")}
    shutil.rmtree(run_dir)
    cache, _ = _encode(params, monkeypatch, from_folder=False)
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.npy")} == files  # byte for byte
    keep = ("files", "scale_factor", "latent_shape", "classes", "train_perplexity")
    assert {k: folder[k] for k in keep} == {k: cache[k] for k in keep}
    assert folder["classes"] == ["cats", "dogs"] and folder["latent_shape"] == [4, 4, 4]
    assert not (run_dir / ".encode-tmp").exists()
    # the streamed files hold what the in-memory encoder gives for the cached images
    tok = load_tokenizer(Paths().run_dir("tiny", make_vq_spec(params).run_id) / "tokenizer")
    ds = load_cache(Paths().gen_cache_for("tiny"))
    lat, codes = encode_images(tok, np.asarray(ds.train_images))
    assert np.array_equal(np.load(run_dir / "train_latents.npy"), lat)
    assert np.array_equal(np.load(run_dir / "train_codes.npy"), codes)
    assert folder["scale_factor"] == pytest.approx(1 / lat.std(), rel=1e-6)


def test_running_stats_equal_the_batch_formula() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(3.0, 2.0, size=(257, 5)) @ rng.normal(size=(5, 5))  # (N, D), correlated
    acc = refstats.RunningStats()
    for i in range(0, len(f), 50):
        acc.add(f[i:i + 50])
    mu, sigma = feature_stats(f)
    out = acc.result()
    assert out["n"] == 257
    np.testing.assert_allclose(out["mu"], mu, rtol=1e-12)
    np.testing.assert_allclose(out["sigma"], sigma, rtol=1e-9, atol=1e-12)
    assert refstats.fid_from_stats(out, {"mu": mu, "sigma": sigma}) == pytest.approx(0, abs=1e-6)


def test_reference_stats_cache_is_keyed(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"mu": np.arange(3.0), "sigma": np.eye(3), "n": 10}

    key = {"data": "a", "weights": "w1"}
    path = refstats.stats_file(tmp_path, "tiny-train-featnet", key)
    first = refstats.cached_stats(path, key, compute)
    again = refstats.cached_stats(path, key, compute)
    assert len(calls) == 1 and np.array_equal(first["mu"], again["mu"]) and again["n"] == 10
    other = {"data": "a", "weights": "w2"}  # retrained extractor: recomputed, never reused
    refstats.cached_stats(path, other, compute)
    assert len(calls) == 2
    assert refstats.stats_file(tmp_path, "x", key) != refstats.stats_file(tmp_path, "x", other)
