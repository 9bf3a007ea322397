"""Figures derived from a run's records: MFU summaries, memory ratios, bf16 speedups, data-loading
headroom, token-scaling exponents. Pure functions of the records (no torch), so they are tested
and re-derived from a JSON file alone.
"""

from __future__ import annotations

import math
from collections import defaultdict

TRAIN = "vit_train"


def ok(records: list[dict], workload: str | None = None, group: str | None = None) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"
            and (workload is None or r["workload"] == workload)
            and (group is None or r["group"] == group)]


def fit_exponent(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares on log-log: y ≈ c·x^k. Returns k, c and R² (None for < 2 usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    k = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    ss_res = sum((p[1] - (my + k * (p[0] - mx))) ** 2 for p in pts)
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    return {"exponent": k, "coef": math.exp(my - k * mx), "r2": 1 - ss_res / ss_tot if ss_tot
            else 1.0, "points": n}


def scaling(records: list[dict], tail_from: int = 256) -> dict | None:
    """Time per step and workload memory vs tokens for the `scaling` group, with exponents over
    all points and over the tail (tokens ≥ tail_from, where the asymptote shows)."""
    rows = sorted(ok(records, group="scaling"), key=lambda r: r["tokens"])
    if not rows:
        return None
    tok = [r["tokens"] for r in rows]
    step = [r["step_s"] for r in rows]
    mem = [r["mem_workload_mb"] for r in rows]
    tail = [i for i, t in enumerate(tok) if t >= tail_from]
    p = rows[0]["params"]

    def fit(ys: list, idx: list[int]) -> dict | None:
        return fit_exponent([tok[i] for i in idx], [ys[i] for i in idx])

    every = list(range(len(rows)))
    return {"model": p["size"], "image_size": p["image_size"], "batch": p["batch"],
            "dtype": p["dtype"], "tokens": tok, "patches": [r["params"]["patch"] for r in rows],
            "step_s": step, "mem_workload_mb": mem, "mem_kind": rows[0]["mem_kind"],
            "tail_from_tokens": tail_from,
            "time_fit": fit(step, every), "time_fit_tail": fit(step, tail),
            "mem_fit": fit(mem, every), "mem_fit_tail": fit(mem, tail)}


def memory_ratios(records: list[dict]) -> list[dict]:
    """Workload memory of p=1 ÷ p=2 for every model measured at both with the same batch."""
    by = defaultdict(dict)
    for r in ok(records, TRAIN):
        p = r["params"]
        key = (p["size"], p["image_size"], p["batch"], p["dtype"], bool(p.get("compile")))
        by[key][p["patch"]] = r
    rows = []
    for (size, image, batch, dtype, compiled), pr in sorted(by.items()):
        if 1 in pr and 2 in pr and pr[1]["mem_workload_mb"] and pr[2]["mem_workload_mb"]:
            a, b = pr[1], pr[2]
            rows.append({"size": size, "image_size": image, "batch": batch, "dtype": dtype,
                         "compiled": compiled, "p1_mb": a["mem_workload_mb"],
                         "p2_mb": b["mem_workload_mb"],
                         "ratio": a["mem_workload_mb"] / b["mem_workload_mb"],
                         "tokens_ratio": a["tokens"] / b["tokens"], "mem_kind": a["mem_kind"]})
    return rows


def bf16_speedups(records: list[dict]) -> list[dict]:
    """bf16 ÷ fp32 throughput for each case measured (or attempted) in both dtypes."""
    by = defaultdict(dict)
    for r in records:
        p = r["params"]
        if r["workload"] not in (TRAIN, "vit_infer") or "dtype" not in p:
            continue
        key = (r["workload"], p["size"], p["patch"], p["image_size"], p["batch"],
               bool(p.get("compile")))
        by[key][p["dtype"]] = r
    rows = []
    for (wl, size, patch, image, batch, _), pair in sorted(by.items()):
        if "fp32" not in pair or "bf16" not in pair:
            continue
        a, b = pair["fp32"], pair["bf16"]
        row = {"workload": wl, "size": size, "patch": patch, "image_size": image, "batch": batch,
               "width": a.get("width"), "fp32_items_per_s": a.get("items_per_s"),
               "bf16_items_per_s": b.get("items_per_s"), "fp32_mfu": a.get("mfu")}
        if a["status"] == "ok" and b["status"] == "ok":
            row["speedup"] = b["items_per_s"] / a["items_per_s"]
        else:
            row["speedup"] = None
            row["reason"] = b.get("reason") or b.get("error") or a.get("reason") or a.get("error")
        rows.append(row)
    return rows


def data_headroom(records: list[dict]) -> dict | None:
    """Data-loading img/s ÷ train img/s, against every train case at the same image size."""
    data = ok(records, "data_loading")
    if not data:
        return None
    d = max(data, key=lambda r: r["items_per_s"])
    image = d["params"]["image_size"]
    trains = [r for r in ok(records, TRAIN) if r["params"]["image_size"] == image]
    rows = sorted(({"id": r["id"], "train_items_per_s": r["items_per_s"],
                    "ratio": d["items_per_s"] / r["items_per_s"], "tokens": r["tokens"]}
                   for r in trains), key=lambda x: x["ratio"])
    return {"id": d["id"], "items_per_s": d["items_per_s"], "image_size": image,
            "min_ratio": rows[0]["ratio"] if rows else None,
            "vs": rows[0]["id"] if rows else None, "rows": rows}


def mfu_by_size(records: list[dict], dtype: str, max_patch: int = 4) -> list[dict]:
    """Per model size (eager and compiled apart): min and max MFU over train cases p ≤ max_patch."""
    by = defaultdict(list)
    for r in ok(records, TRAIN):
        p = r["params"]
        if p["dtype"] == dtype and p["patch"] <= max_patch and r.get("mfu") is not None \
                and r["group"] in ("throughput", "compile"):
            by[(p["size"], bool(p.get("compile")))].append(r)
    rows = []
    for (size, compiled), rs in sorted(by.items(), key=lambda kv: (kv[1][0]["width"], kv[0][1])):
        lo, hi = min(rs, key=lambda r: r["mfu"]), max(rs, key=lambda r: r["mfu"])
        rows.append({"size": size, "width": lo["width"], "head_dim": lo.get("head_dim"),
                     "compiled": compiled, "dtype": dtype,
                     "min_mfu": lo["mfu"], "min_id": lo["id"], "max_mfu": hi["mfu"],
                     "max_id": hi["id"], "patches": sorted(r["params"]["patch"] for r in rs),
                     "min_contention": min((r.get("contention", 1.0) for r in rs), default=1.0)})
    return rows


def breakdown_summary(records: list[dict], peaks: dict) -> dict | None:
    """The profiled case: op-time shares, and the rate matmuls reach on their own."""
    for r in ok(records):
        if "breakdown" not in r:
            continue
        b = r["breakdown"]
        out = {"id": r["id"], "share": b["share"], "top_other": b["top_other"]}
        mm_s = b["seconds"].get("matmul", 0.0)  # profiled GEMM time: large ops, small overhead
        if r.get("flops_per_item") and mm_s > 0:
            linear = r["flops_per_item"] * r["items_per_step"] * (1 - r["attention_flops_fraction"])
            peak = peaks[r["params"]["dtype"]]["flops_per_s"]
            out["matmul_fraction_of_peak"] = linear / mm_s / peak
        return out
    return None
