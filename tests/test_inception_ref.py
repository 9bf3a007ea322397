"""The ADM reference batch (.npz) as an FID reference, and the conversion's checks; no network,
no Inception forward pass (tests/test_fidelity.py runs the network)."""

from __future__ import annotations


from pathlib import Path

import numpy as np
import pytest
import torch

from pixbench.errors import UserError
from pixbench.eval import inception as inc
from pixbench.eval.refstats import fid_from_stats

D = inc.FEATURE_DIM


def adm_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_adm_reference_reads_and_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(64, D)).astype(np.float32)
    mu, sigma = f.mean(0).astype(np.float64), np.cov(f, rowvar=False)
    imgs = np.zeros((3, 8, 8, 3), np.uint8)
    ref = inc.read_fid_reference(adm_npz(tmp_path / "VIRTUAL_tiny.npz", mu=mu.astype(np.float32),
                                         sigma=sigma.astype(np.float32), arr_0=imgs))
    assert ref["mu"].dtype == np.float64 and ref["sigma"].shape == (D, D) and ref["n"] == 3
    assert len(ref["sha256"]) == 64
    assert fid_from_stats(ref, {"mu": mu, "sigma": sigma}) == pytest.approx(0, abs=1e-3)
    assert fid_from_stats(ref, {"mu": mu + 1, "sigma": sigma}) == pytest.approx(D, rel=1e-3)


@pytest.mark.parametrize("arrays, why", [
    ({"mu": np.zeros(D)}, "needs arrays mu and sigma"),
    ({"mu": np.zeros(10), "sigma": np.eye(10)}, "are not float"),
    ({"mu": np.zeros(D, np.int64), "sigma": np.eye(D)}, "are not float"),
    ({"mu": np.full(D, np.nan), "sigma": np.eye(D)}, "NaN"),
    ({"mu": np.array([{"a": 1}] * D, dtype=object), "sigma": np.eye(D)}, "unreadable"),
])
def test_bad_adm_reference_is_one_line(tmp_path: Path, arrays: dict, why: str) -> None:
    path = tmp_path / "ref.npz"
    np.savez(path, **arrays)  # object arrays are pickled: refused (allow_pickle=False)
    with pytest.raises(UserError, match=why) as err:
        inc.read_fid_reference(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_and_corrupt_reference(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        inc.read_fid_reference(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match="unreadable"):
        inc.read_fid_reference(bad)


def test_conversion_checks_layers() -> None:
    """A source with a layer of the wrong shape (or count) is refused, naming it."""
    good = {"l0.weight": torch.zeros(32, 3, 3, 3), "l0.beta": torch.zeros(32),
            "l0.mean": torch.zeros(32), "l0.var": torch.ones(32)}
    with pytest.raises(UserError, match="conv layers"):
        inc.convert_state(good)


def test_inception_weights_prefers_real_then_converted(tmp_path: Path) -> None:
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / inc.CONVERTED_FILE).write_bytes(b"x")
    assert inc.inception_weights({"TORCH_HOME": str(tmp_path)}) == hub / inc.CONVERTED_FILE
    (hub / inc.INCEPTION_FILE).write_bytes(b"x")
    assert inc.inception_weights({"TORCH_HOME": str(tmp_path)}) == hub / inc.INCEPTION_FILE


def test_cli_main_writes_where_asked(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w.pth"
    assert inc.main([str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert torch.count_nonzero(state["fc.weight"]) == 0 and len(state) == 566
    assert "no IS" in capsys.readouterr().out

