"""Seconds-long checks that the suite works (plain tests: `--benchmark-only` skips them).

    pytest bench/test_bench_smoke.py
"""

from __future__ import annotations

import json

import pytest

from pixbench.bench import derive, targets
from pixbench.bench.costs import PAPER_RUNS, cost_estimate
from pixbench.bench.env import sanitize
from pixbench.bench.plan import PROFILES, get_profile
from pixbench.bench.report import rounded

TOP_KEYS = {"schema", "env_name", "profile", "device", "dtypes", "complete", "duration_s",
            "environment", "peaks", "results", "derived", "cost_estimate", "targets",
            "pending_workloads", "files"}


def test_quick_suite_writes_json_summary_and_plots(tmp_path):
    from pixbench.bench.run import run_suite

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
    assert any(t["key"] == "fid_features" and t["status"] == "PENDING" for t in doc["targets"])
    assert len(doc["cost_estimate"]["rows"]) == len(PAPER_RUNS)
    assert doc["cost_estimate"]["unit"] == "CPU-hours, for scale"
    assert doc["derived"]["scaling"]["tokens"] == [16, 64, 256]
    md = (tmp_path / doc["files"]["summary"]).read_text()
    assert "## Targets" in md and "FID features" in md
    for plot in doc["files"]["plots"]:
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_have_unique_ids_and_registered_workloads(name):
    from pixbench.bench.workloads import WORKLOADS

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


def test_targets_not_in_profile_read_na_and_unbuilt_read_pending():
    rows = {r["key"]: r for r in targets.all_targets([], {}, "cpu", {}, planned={"throughput"})}
    assert rows["memory_ratio"]["status"] == "N/A"
    assert rows["data_loading"]["status"] == "N/A"
    assert rows["fid_features"]["status"] == "PENDING"  # no such workload registered yet
