"""A tiny copy of the project for study tests: the real dvc.yaml and sources (DVC hashes them as
deps), a params.yaml whose recipes are the tests' tiny ones (every track, real Fashion-MNIST at
8x8 and 16x16 with small subsets), a DVC repo without git."""

from __future__ import annotations

import contextlib
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import TINY_CLASSIFY, TINY_DATA, TINY_GEN, TINY_MAE

ROOT = Path(__file__).resolve().parents[1]
SUBSET = {"train_subset": 256, "val_subset": 64}


def study_params(*, patches=(2, 4), seeds=(0,), mae_patches=(2, 4), alt_patches=(4,),
                 gen_patches=(1, 2), classify: dict | None = None) -> dict:
    """Recipes = the tests' tiny configs on small subsets; the profile `tiny` changes nothing
    (every part `{}`, as dvc.yaml tracks each)."""
    mae = copy.deepcopy(TINY_MAE)
    mae["pretrain"].update(train_subset=256, epochs=1)
    for part in ("finetune", "linprobe"):
        mae[part].update(SUBSET, epochs=1)
    gen = copy.deepcopy(TINY_GEN)
    gen["latents"] = {"train_subset": 256, "val_subset": 64}
    gen["featnet"]["train_subset"] = 256
    # the report's sample grids show 4 samples of each of Fashion-MNIST's 10 classes
    gen["sample"].update(num_samples=60, batch_size=30)
    recipes = {"data": dict(TINY_DATA), "mae": mae, "gen": gen,
               "classify": {**copy.deepcopy(TINY_CLASSIFY), **SUBSET, "epochs": 1,
                            **(classify or {})}}
    empty = {"data": {}, "classify": {}, "mae": {"pretrain": {}, "finetune": {}, "linprobe": {}},
             "gen": {k: {} for k in gen}}
    return {"profile": "tiny",
            "sweep": {"sizes": ["xxs"], "patches": list(patches), "seeds": list(seeds)},
            "mae_sweep": {"sizes": ["xxs"], "patches": list(mae_patches), "seeds": [0],
                          "alt_target": "norm_pix", "alt_patches": list(alt_patches)},
            "locality": {"variants": {"shuffle": {"permutation": {
                "kind": "shuffle", "swaps": 0, "distance": 1, "seed": 0}}},
                "run": ["shuffle"], "seeds": [0]},
            "gen_sweep": {"sizes": ["xxs"], "patches": list(gen_patches), "seeds": [0],
                          "tokenizer_seed": 0},
            "verify": {"k": 4.0, "rel_floor": 0.01, "single_seed_rel": 0.15, "alpha": 0.05,
                       "sanity": {}},
            "recipes": recipes, "profiles": {"tiny": empty}}


def make_study_repo(path: Path, params: dict) -> Path:
    """`path` as a DVC project (no git) with this repo's dvc.yaml and sources; returns it."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copy(ROOT / ".dvcignore", path / ".dvcignore")
    shutil.copytree(ROOT / "src", path / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "reports" / "bench", path / "reports" / "bench")
    # verify (the last stage) reads reports/reference; the tiny profile has no reference yet
    (path / "reports" / "reference").mkdir(parents=True)
    (path / "reports" / "reference" / "README.md").write_text("No reference for `tiny`.\n")
    # vq-train and featnet read instruments/ (fixed upstream models); `tiny` pins none
    (path / "instruments").mkdir()
    (path / "instruments" / "README.md").write_text("No instruments for `tiny`.\n")
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from pixbench.config import load_params
    from pixbench.config.cells import write_cells

    write_cells(load_params(path / "params.yaml"), path)  # what `pixbench study cells` writes
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q", "-f"], cwd=path,
                   check=True)
    with open(path / ".dvc" / "config", "a") as f:  # `dvc init --no-scm` wrote no_scm = True
        f.write("    analytics = false\n    check_update = false\n")
    return path


def plant_bad_checkpoint(repo: Path, cmd: str) -> str:
    """A run dir of the cell's own spec holding a checkpoint that is not one: the cell is
    pending (no metrics) and its job fails when it restores."""
    from pixbench.config import Paths
    from pixbench.runio import atomic_write_json
    from pixbench.cli.options import pixbench_command
    from pixbench.study.dag import plan_command

    with contextlib.chdir(repo):
        _, spec, _, _ = plan_command(cmd, "plant", pixbench_command)
        run_dir = Paths(runs_dir=repo / "runs").run_dir(spec.profile, spec.run_id)
    (run_dir / "ckpt").mkdir(parents=True)
    atomic_write_json(run_dir / "spec.json", {"digest": spec.digest(), "spec": spec.canonical()})
    (run_dir / "ckpt" / "last.pt").write_bytes(b"not a checkpoint")
    return spec.run_id
