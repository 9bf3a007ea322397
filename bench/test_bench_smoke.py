"""Seconds-long checks that the suite works (plain tests: `--benchmark-only` skips them).

    pytest bench/test_bench_smoke.py
"""

from __future__ import annotations

import json

import pytest

from benchsuite import derive, targets
from benchsuite.costs import PAPER_RUNS, cost_estimate
from benchsuite.env import sanitize
from benchsuite.plan import GEN_GROUPS, PROFILES, get_profile
from benchsuite.report import rounded

TOP_KEYS = {"schema", "env_name", "profile", "device", "dtypes", "complete", "duration_s",
            "environment", "peaks", "results", "derived", "cost_estimate", "targets",
            "pending_workloads", "files"}


def test_quick_suite_writes_json_summary_and_plots(tmp_path):
    from benchsuite.run import run_suite

    path = run_suite("quick", tmp_path)
    doc = json.loads(path.read_text())
    assert set(doc) == TOP_KEYS
    assert doc["complete"] and path.name == doc["env_name"] + ".json"
    assert doc["env_name"].startswith("quick-cpu-fp32-bf16-torch")
    assert {r["status"] for r in doc["results"]} <= {"ok", "skipped"}
    assert {r["id"] for r in doc["results"]} == {c.id for c in get_profile("quick").cases}
    train = [r for r in doc["results"] if r["workload"] == "vit_train" and r["status"] == "ok"]
    assert all(r["flops_per_s"] > 0 and r["mem_workload_mb"] is not None for r in train)
    assert doc["peaks"]["fp32"]["fast_path"] and doc["peaks"]["fp32"]["flops_per_s"] > 0
    assert {t["status"] for t in doc["targets"]} <= {"PASS", "MISS", "PENDING", "N/A", "INFO"}
    fid = next(t for t in doc["targets"] if t["key"] == "fid_features")
    assert fid["status"] in ("PASS", "MISS") and "img/s (fid_features/" in fid["measured"]
    assert doc["pending_workloads"] == {}
    gen = [r for r in doc["results"] if r["group"] in GEN_GROUPS]
    assert {r["workload"] for r in gen} == {"mae_encoder", "dit_train", "dit_infer",
                                           "tokenizer_encode", "fid_features"}
    assert all(r["status"] == "ok" and r["flops_per_s"] > 0 for r in gen)
    assert len(doc["cost_estimate"]["rows"]) == len(PAPER_RUNS)
    assert doc["cost_estimate"]["unit"] == "CPU-hours, for scale"
    assert doc["derived"]["scaling"]["tokens"] == [16, 64, 256]
    md = (tmp_path / doc["files"]["summary"]).read_text()
    assert "## Targets" in md and "FID features" in md and "## MAE, DiT, tokenizer" in md
    for plot in doc["files"]["plots"]:
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_have_unique_ids_and_registered_workloads(name):
    from benchsuite.workloads import WORKLOADS

    prof = get_profile(name)
    assert all(c.workload in WORKLOADS for c in prof.cases)
    assert prof.breakdown is None or prof.breakdown in {c.id for c in prof.cases}
    if name in ("cpu", "gpu"):  # the token sweep spans 16 -> 4096, the memory pair shares a batch
        tokens = sorted((c.params["image_size"] // c.params["patch"]) ** 2 for c in prof.cases
                        if c.group == "scaling")
        assert tokens[0] == 16 and tokens[-1] == 4096
        pairs = {}
        for c in prof.cases:
            if c.workload == "vit_train" and c.params["patch"] in (1, 2):
                k = (c.params["size"], c.params["image_size"], c.params["dtype"], c.group)
                pairs.setdefault(k, set()).add(c.params["batch"])
        assert all(len(b) == 1 for b in pairs.values())


def test_fit_exponent_recovers_a_power_law():
    fit = derive.fit_exponent([16, 64, 256, 1024], [3 * t ** 1.5 for t in (16, 64, 256, 1024)])
    assert fit["exponent"] == pytest.approx(1.5) and fit["coef"] == pytest.approx(3)
    assert fit["r2"] == pytest.approx(1.0)
    assert derive.fit_exponent([16], [1.0]) is None


def _rec(size, patch, image, dtype, batch, items_per_s, mem=None, mfu=0.5, tokens=None,
         group="throughput"):
    return {"id": f"vit_train/{size}-p{patch}-{image}px-{dtype}-b{batch}", "workload": "vit_train",
            "group": group, "status": "ok", "params": {"size": size, "patch": patch, "image_size":
            image, "dtype": dtype, "batch": batch, "compile": False}, "items_per_s": items_per_s,
            "mfu": mfu, "tokens": tokens or (image // patch) ** 2, "mem_workload_mb": mem,
            "mem_kind": "cpu_vmhwm", "width": 192}


def test_memory_ratio_pairs_same_batch_only():
    recs = [_rec("t", 1, 32, "fp32", 8, 1.0, mem=400.0),
            _rec("t", 2, 32, "fp32", 8, 4.0, mem=100.0),
            _rec("t", 2, 32, "fp32", 16, 4.0, mem=200.0)]
    rows = derive.memory_ratios(recs)
    assert len(rows) == 1 and rows[0]["ratio"] == pytest.approx(4.0)
    assert targets.memory(recs)[0]["status"] == "PASS"


def test_cost_estimate_labels_measured_and_analytic_rows():
    recs = [_rec("t", 1, 32, "fp32", 8, 2.0)]
    peaks = {"fp32": {"flops_per_s": 1e11, "fast_path": True}}
    c = cost_estimate(recs, peaks, "cpu", "fp32")
    t1 = c["rows"][0]
    assert (t1["size"], t1["patch"], t1["method"]) == ("t", 1, "measured")
    assert t1["hours"] == pytest.approx(50_000 * 2400 / 2.0 / 3600)
    assert all(r["method"] == "analytic" and r["source"] == recs[0]["id"] for r in c["rows"][1:])


def test_names_and_rounding_are_deterministic():
    assert sanitize("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"
    assert rounded({"a": [1.234567, 2], "b": 0.000123456}) == {"a": [1.235, 2], "b": 0.0001235}


def test_targets_not_in_profile_read_na():
    rows = {r["key"]: r for r in targets.all_targets([], {}, "cpu", {}, planned={"throughput"})}
    assert rows["memory_ratio"]["status"] == "N/A"
    assert rows["data_loading"]["status"] == "N/A"
    assert rows["fid_features"]["status"] == "N/A"  # registered, not in this profile


def _fid_rec(items_per_s, batch=250):
    return {"id": f"fid_features/32px1-b{batch}", "workload": "fid_features", "group": "fid",
            "status": "ok", "params": {"image_size": 32, "batch": batch},
            "items_per_s": items_per_s, "items_per_step": batch, "flops_per_item": 1.4e7,
            "flops_per_s": 1.4e7 * items_per_s, "mfu": 0.2}


def test_fid_target_takes_the_best_batch_and_judges_cpu_only():
    recs = [_fid_rec(900.0), _fid_rec(1200.0, batch=1000)]
    row = targets.fid(recs, "cpu", {"torch_threads": 2})[0]
    assert row["status"] == "PASS" and row["measured"].startswith("1,200 img/s")
    assert "b1000" in row["measured"] and "2 thread(s)" in row["measured"]
    assert targets.fid([_fid_rec(900.0)], "cpu")[0]["status"] == "MISS"
    assert targets.fid(recs, "cuda")[0]["status"] == "INFO"
    assert targets.fid([], "cpu")[0]["status"] == "PENDING"


TINY = {  # seconds-long shapes; the profiles hold the real ones
    "mae_encoder": {"size": "xxs", "patch": 2, "image_size": 8, "in_chans": 3, "batch": 2,
                    "dtype": "fp32"},
    "dit_train": {"size": "xxs", "patch": 2, "latent_channels": 4, "latent_size": 4, "batch": 2,
                  "dtype": "fp32"},
    "dit_infer": {"size": "xxs", "patch": 1, "latent_channels": 4, "latent_size": 4, "batch": 2,
                  "dtype": "fp32"},
    "tokenizer_encode": {"image_size": 16, "in_chans": 1, "batch": 2},
    "fid_features": {"image_size": 16, "batch": 4},
}


@pytest.mark.parametrize("workload", sorted(TINY))
def test_gen_workloads_build_and_step_with_their_flops(workload):
    from benchsuite.workloads import build
    from pixbench.models.dit import dit_gflops_per_step

    prep = build(workload, "cpu", TINY[workload])
    prep.step()
    prep.step()
    p = TINY[workload]
    assert prep.items_per_step == p["batch"] and prep.flops_per_item > 0
    if workload.startswith("dit_"):
        fwd = dit_gflops_per_step(p["size"], p["patch"], p["latent_size"], 4) * 1e9
        assert prep.flops_per_item == pytest.approx((3 if workload == "dit_train" else 2) * fwd)
    if workload == "mae_encoder":
        assert prep.info["encoder_tokens"] == prep.info["tokens"] // 4 == 4
