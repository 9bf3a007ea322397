"""The report from fixture metrics: table values, plots, byte-identical reruns."""

from __future__ import annotations

import json
import statistics

from conftest import make_tiny_cache, write_params
import pytest

from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.errors import UserError
from pixbench.report import build_report
from pixbench.tasks.table import TASKS


def _fixture_run(runs, patch, seed, top1, variant=None, params=None):
    d = runs / (f"classify-xxs-p{patch}-s{seed}" + (f"-{variant}" if variant else ""))
    d.mkdir(parents=True)
    m = {"run_id": d.name, "model": f"vit-xxs-p{patch}", "display": f"ViT-XXS/{patch}",
         "profile": "tiny", "dataset": "fashion_mnist", "image_size": 8, "size": "xxs",
         "patch": patch, "seed": seed, "variant": variant, "tokens": (8 // patch) ** 2, "num_classes": 4,
         "params": 1000 + patch, "top1": top1, "top5": 99.0, "loss": 0.5, "val_n": 64,
         "gflops_train": 0.3 / patch, "gflops_infer": 0.1 / patch, "train_img_per_s": 100.0 * patch,
         "infer_img_per_s": 300.0 * patch, "step_mem_mb": 10.0 / patch, "train_s": 5.0 * seed + 5.0 / patch,
         "device": "cpu", "spec_digest": make_classify_spec(
             params, size="xxs", patch=patch, seed=seed, variant=variant).digest()}
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "curve.json").write_text(json.dumps([
        {"epoch": 1, "val_top1_subset": top1 - 15, "step": 8, "images_seen": 256, "train_time_s": 1.0},
        {"epoch": 2, "val_top1_subset": top1, "step": 16, "images_seen": 512, "train_time_s": 2.0}]))
    (d / "manifest.json").write_text(json.dumps({"cpu": "Test CPU", "torch_threads": 2,
                                                 "versions": {"torch": "2.x", "timm": "1.x"}}))


def test_report_tables_plots_and_determinism(workdir, tiny_params):
    tiny_params["sweep"]["seeds"] = [0, 1, 2]
    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    runs = workdir / "runs" / "tiny"
    accs = {1: [60.0, 64.0, 62.5], 4: [80.0, 81.0, 79.5]}
    for patch, values in accs.items():
        for seed, acc in enumerate(values):
            _fixture_run(runs, patch, seed, acc, params=params)
    _fixture_run(runs, 1, 0, 61.0, variant="shuffle", params=params)
    _fixture_run(runs, 4, 0, 55.0, variant="shuffle", params=params)
    path = build_report(params, Paths(), TASKS)
    text = path.read_text()
    assert "| ViT-XXS/1 | 1 | 62.17 ± 2.02 (n=3) | 61.00 (n=1) |" in text
    assert "| ViT-XXS/4 | 4 | 80.17 ± 0.76 (n=3) | 55.00 (n=1) |" in text
    p1 = f"{statistics.fmean(accs[1]):.2f} ± {statistics.stdev(accs[1]):.2f}"
    row = next(line for line in text.splitlines() if line.startswith("| ViT-XXS/1 |"))
    assert p1 in row and "| 64 |" in row and row.rstrip().endswith("| 3 | 10 |")
    # the paper's CIFAR/ImageNet tables are not about Fashion-MNIST: not shown
    assert "CIFAR-100 32x32 |" not in text and "supervised numbers are on CIFAR-100" in text
    # per seed: plateau and escape (the fixture curve has too few points for a verdict)
    assert "| ViT-XXS/1 | 2 | 62.50 | – | – |" in text
    assert "Test CPU" in text
    figs = sorted((workdir / "reports" / "figures").iterdir())
    assert [f.name for f in figs] == [
        "classify_tiny_fashion_mnist8_learning_curves.png",
        "classify_tiny_fashion_mnist8_top1_vs_gflops.png",
        "classify_tiny_fashion_mnist8_top1_vs_patch.png",
        "classify_tiny_fashion_mnist8_top1_vs_train_time.png"]
    # Welch's t-test of p=1 against the best patch (p=4), checked against scipy directly
    from scipy import stats
    ref = stats.ttest_ind(accs[1], accs[4], equal_var=False)
    assert f"t = {ref.statistic:.2f}" in text and f"p = {ref.pvalue:.2g}" in text
    assert "pixels (p=1) vs the best patch size p=4: Δ -18.00 pt" in text
    # cost to reach 50%: p=1 reaches it at epoch 2 only (top1-15 < 50 at epoch 1)
    assert "| ViT-XXS/1 | 154 | 2.0 | – | – |" in text  # 512 images x 0.3 GFLOPs
    html = (workdir / "reports" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "http" not in html
    for f in figs:
        assert f.name in text and f.read_bytes()[:4] == b"\x89PNG"
    before = {f: f.read_bytes() for f in [path, workdir / "reports" / "report.html", *figs]}
    build_report(params, Paths(), TASKS)
    assert all(f.read_bytes() == b for f, b in before.items())


def test_report_without_runs_says_so(workdir, tiny_params):
    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    text = build_report(params, Paths(), TASKS).read_text()
    assert "No finished runs" in text and "## Locality" not in text


def test_report_refuses_runs_of_other_settings(workdir, tiny_params):
    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    runs = workdir / "runs" / "tiny"
    _fixture_run(runs, 1, 0, 60.0, params=params)
    tiny_params["profiles"]["tiny"]["classify"]["epochs"] = 7  # params changed, run not redone
    changed = load_params(write_params(workdir / "params.yaml", tiny_params))
    with pytest.raises(UserError, match="classify-xxs-p1-s0: refused, made with other settings"):
        build_report(changed, Paths(), TASKS)


def test_bench_section_reads_full_results_only(tmp_path):
    from pixbench.report.bench import bench_section

    bench = tmp_path / "bench"
    bench.mkdir()
    doc = {"env_name": "cpu-fp32-torchX", "profile": "cpu", "duration_s": 12.0, "device": "cpu",
           "environment": {"cpu": "Test CPU"}, "files": {"plots": ["cpu-fp32-torchX_scaling.png"]},
           "targets": [{"figure": "mem p1/p2", "target": "<= 4.5x", "measured": "3.2x",
                        "status": "PASS", "limits": ""}],
           "cost_estimate": {"unit": "CPU-hours", "note": "one seed", "rows": [
               {"table": "CIFAR-100 32x32", "size": "t", "patch": 1, "tokens": 1024, "epochs": 2400,
                "images": 120000000, "train_flops_per_image": 6.16e10, "items_per_s": 0.25,
                "hours": 133333.0, "method": "measured", "source": "vit_train/t-p1"}]}}
    (bench / "cpu-fp32-torchX.json").write_text(json.dumps(doc))
    (bench / "quick-cpu.json").write_text(json.dumps({**doc, "env_name": "quick-one"}))
    text = "\n".join(bench_section(bench, tmp_path))
    assert "| mem p1/p2 | <= 4.5x | 3.2x | **PASS** |  |" in text and "quick-one" not in text
    assert "![cpu-fp32-torchX_scaling.png](bench/cpu-fp32-torchX_scaling.png)" in text
    assert "| CIFAR-100 32x32 | ViT-T/1 | 1024 | 2400 | 120,000,000 | 61.6 | 0.25 | 133,333 |" in text


def test_bench_section_links_rehearsals_and_skips_their_json(tmp_path):
    from pixbench.report.bench import bench_section

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "scale-prepare.json").write_text(json.dumps({"targets": [], "rows": []}))
    (bench / "scale-prepare.md").write_text("# Scale rehearsal\n")
    (bench / "broken.json").write_text("{not json")
    text = "\n".join(bench_section(bench, tmp_path))
    assert "- [scale-prepare](bench/scale-prepare.md)" in text and "broken" not in text


def test_report_shows_only_the_current_sweep_and_the_dataset(workdir, tiny_params):
    """Runs of seeds 0-2 on disk, a sweep of seed 0: the report has n=1 (issue 17); the class
    names and channels come from the cache manifest."""
    make_tiny_cache(workdir / "data" / "tiny")
    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    runs = workdir / "runs" / "tiny"
    wide = load_params(write_params(workdir / "wide.yaml", {
        **tiny_params, "sweep": {**tiny_params["sweep"], "seeds": [0, 1, 2]}}))
    for seed, acc in enumerate([60.0, 64.0, 62.5]):
        _fixture_run(runs, 1, seed, acc, params=wide)
    text = build_report(params, Paths(), TASKS).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ViT-XXS/1 |"))
    assert "| 60.00 |" in row and row.rstrip().endswith("| 1 | 5 |")
    assert "| ViT-XXS/1 | 1 |" not in text.split("Per seed")[1].split("Plateau:")[0]
    assert "8x8, 1 channel (gray), 4 classes, 256 train / 64 val images" in text
    assert "Classes: c0, c1, c2, c3." in text


def test_paper_table_only_beside_its_dataset(workdir, tiny_params):
    tiny_params["profiles"]["tiny"]["data"]["source"] = "cifar100"
    tiny_params["profiles"]["tiny"]["data"]["image_size"] = 32
    text = build_report(load_params(write_params(workdir / "params.yaml", tiny_params)),
                        Paths(), TASKS).read_text()
    assert "| CIFAR-100 32x32 | S (384, 12) | 83.7 | 86.4 | [S]" in text
    assert "ImageNet 28x28" not in text and "not shown" not in text
