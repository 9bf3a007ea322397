"""The cost estimate printed before a sweep trains (study/estimate.py): analytic FLOPs of each
cell's steps over a FLOP rate measured here; a real tiny run lands within 3x of its estimate,
a finished cell costs nothing, and the pixel model costs the most."""

from __future__ import annotations

import re
import time

import pytest

from conftest import TINY_DATA, make_tiny_cache, write_params
from pixbench.config import Paths, load_params
from pixbench.config.pipeline import sweep_runs
from pixbench.study import estimate as estimate_mod
from pixbench.study.estimate import estimate, estimate_lines

DATA16 = {**TINY_DATA, "image_size": 16}


@pytest.fixture
def project16(workdir, tiny_params):
    """16x16 images (256 pixel tokens: compute, not the fixed costs, dominates the p=1 cell),
    512 train images at batch 32 for 2 epochs: 32 steps a cell."""
    tiny_params["profiles"]["tiny"]["data"] = DATA16
    tiny_params["sweep"]["patches"] = [1, 2, 4]
    make_tiny_cache(workdir / "data" / "tiny", DATA16, n_train=512, n_val=64)
    return write_params(workdir / "params.yaml", tiny_params)


def _cells(est) -> dict:
    return {c.run_id: c for c in est.cells}


def test_a_tiny_run_takes_within_3x_of_its_estimate_and_then_costs_nothing(project16):
    from pixbench.tasks.classify import run as classify

    params = load_params(project16)
    runs = [r for r in sweep_runs(params) if r.task == "classify" and r.spec.variant is None]
    est = estimate(params, runs, Paths(), device="cpu")
    cells = _cells(est)
    p1, p2, p4 = (cells[f"classify-xxs-p{p}-s0"] for p in (1, 2, 4))
    assert [(c.tokens, c.steps, c.status) for c in (p1, p2, p4)] == \
        [(256, 32, "pending"), (64, 32, "pending"), (16, 32, "pending")]
    assert p1.gflops > p2.gflops > p4.gflops and p1.seconds > p2.seconds > p4.seconds
    assert [r.label for r in est.rates] == [f"ViT-XXS/{p} 16px" for p in (1, 2, 4)]
    assert est.calibration_s > 0 and est.total_s == pytest.approx(sum(c.seconds for c in est.cells))

    spec = next(r.spec for r in runs if r.spec.patch == 1)
    t0 = time.perf_counter()
    classify.run(spec, Paths(), progress=False)
    wall = time.perf_counter() - t0
    assert wall / 3 <= p1.seconds <= 3 * wall, (p1.seconds, wall)

    again = estimate(params, runs, Paths(), device="cpu")
    done = _cells(again)["classify-xxs-p1-s0"]
    assert (done.status, done.seconds) == ("done", 0.0)
    assert [r.label for r in again.rates] == ["ViT-XXS/2 16px", "ViT-XXS/4 16px"]  # not timed
    assert again.total_s == pytest.approx(sum(c.seconds for c in again.cells if c.seconds))
    lines = estimate_lines(again)
    assert lines[0].split() == ["cell", "tokens", "steps", "GFLOPs", "est.", "time"]
    assert lines[1].startswith("classify-xxs-p1-s0 ") and lines[1].split()[1:] == \
        ["-", "-", "-", "done"]
    assert lines[2].split()[1:3] == ["64", "32"]
    assert lines[4].startswith("total: ") and "2 pending cells (1 done, 0 without an estimate)" \
        in lines[4]
    assert lines[4].endswith(", one at a time")
    assert lines[5].startswith("measured on cpu with 1 threads, calibration ")
    side_by_side = estimate_lines(again, jobs=2)[4]  # no sooner than the longest cell
    p2_s = _cells(again)["classify-xxs-p2-s0"].seconds
    assert side_by_side.startswith(lines[4] + "; 2 at a time about ")
    assert side_by_side.endswith(estimate_mod.duration(max(again.total_s / 2, p2_s)))
    assert re.fullmatch(r"  ViT-XXS/2 16px: [\d.]+ GFLOP/s training at batch 32, [\d.]+ forward",
                        lines[6])


def test_every_track_is_costed_or_says_why(gen_project, monkeypatch):
    """Classification (min_steps included), MAE and DiT cells get numbers; the convolutional
    tokenizer, FeatNet and the evaluations say "no estimate"; the calibration restores the
    RNG and the thread count it found."""
    import torch
    import yaml

    monkeypatch.setattr(estimate_mod, "STEP_S", 0.05)  # tiny models: no timing is checked here
    raw = yaml.safe_load(gen_project.read_text())
    raw["profiles"]["tiny"]["classify"]["min_steps"] = 20  # 256 images / 32: 8 steps an epoch
    params = load_params(write_params(gen_project, raw))
    runs = sweep_runs(params)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    cells = _cells(estimate(params, runs, Paths(), device="cpu", threads=2))
    assert torch.rand(1) == expected and torch.get_num_threads() == threads
    assert cells["classify-xxs-p1-s0"].steps == 24  # ceil(20 / 8) = 3 epochs
    assert cells["mae-finetune-xxs-p1-s0"].steps == 16  # its recipe has no min_steps
    for run_id, tokens in (("classify-xxs-p2-s0", 16), ("mae-pretrain-xxs-p2-s0", 16),
                           ("mae-linprobe-xxs-p2-s0", 16), ("dit-xxs-p1-s0", 16),
                           ("dit-xxs-p2-s0", 4)):
        assert (cells[run_id].tokens, cells[run_id].status) == (tokens, "pending"), run_id
        assert cells[run_id].seconds > 0
    assert cells["dit-xxs-p1-s0"].steps == 6
    assert cells["dit-xxs-p1-s0"].gflops > cells["dit-xxs-p2-s0"].gflops
    assert cells["mae-linprobe-xxs-p2-s0"].gflops < cells["mae-finetune-xxs-p2-s0"].gflops
    for run in runs:
        if run.task in ("vq", "featnet", "vq-eval", "dit-eval"):
            assert cells[run.run_id].seconds is None
            assert cells[run.run_id].status.startswith("no estimate (")
    spent = estimate(params, runs, Paths(), device="cpu", budget_s=0)  # nothing is timed
    assert spent.rates == [] and spent.total_s == 0
    assert _cells(spent)["classify-xxs-p1-s0"].status == \
        "no estimate (calibration budget spent before its model)"


def test_without_a_prepared_cache_there_is_no_estimate_and_nothing_is_timed(workdir, tiny_params):
    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    est = estimate(params, sweep_runs(params), Paths(), device="cpu")
    assert est.rates == [] and est.total_s == 0
    assert all(c.status.startswith("no estimate (no dataset cache at ") for c in est.cells)
    lines = estimate_lines(est)
    specs = [r.spec for r in sweep_runs(params)]  # the specs alone, estimated on the way
    assert estimate_lines(params, specs, Paths(), device="cpu")[:-1] == lines[:-1]
    assert f"0 pending cells (0 done, {len(est.cells)} without an estimate)" in lines[-2]
    assert lines[-1].endswith(" nothing to time")
