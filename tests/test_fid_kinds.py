"""One fixed image set scored by the committed FeatNet ruler gives the same FID under every
emulated machine kind (issue 23): ATen's dispatch capability, oneDNN's ISA and MKL's code path
forced by environment variables, each in its own process (they are read at start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULER = ROOT / "instruments" / "fmnist-cpu" / "featnet.pt"
# Three processes (~10 s each): the native kernels, ATen's scalar fallback, and AVX2 oneDNN with
# MKL's reproducible COMPATIBLE branch (bench/machine_kinds.py runs each alone, end to end).
SETTINGS = ({}, {"ATEN_CPU_CAPABILITY": "default"},
            {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"})
SCORE = """
import json, numpy as np, torch
from pixbench.eval.fidelity import fidelity_metrics
rng = np.random.default_rng(0)
base = rng.integers(0, 256, size=(1, 1, 32, 32))
def images(seed, n):
    r = np.random.default_rng(seed)
    x = np.clip(base + r.normal(0, 40, size=(n, 1, 32, 32)), 0, 255)
    return torch.from_numpy(x.astype(np.uint8))
m = fidelity_metrics(images(1, 200), images(2, 200), extractor="featnet",
                     weights_path={ruler!r}, ref_cache_name=None, cache_root=None,
                     kid_subset_size=100)
print(json.dumps({{"fid": m["fid_featnet"], "capability":
                  torch.backends.cpu.get_cpu_capability()}}))
"""


def _score(env: dict) -> dict:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ATEN_", "ONEDNN_", "MKL_"))}
    full.update(env, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCORE.format(ruler=str(RULER))], env=full,
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not RULER.is_file(), reason="the committed FeatNet instrument is absent")
def test_one_image_set_scores_the_same_fid_under_every_kernel_setting():
    got = [_score(env) for env in SETTINGS]
    fids = [g["fid"] for g in got]
    assert got[1]["capability"] == "DEFAULT"
    assert max(fids) - min(fids) <= 1e-4 * abs(fids[0]), fids
