"""What a benchmark run must show for the check to pass, read from its JSON alone.

- every case of the suite (or of the selection) ran: none left by the deadline;
- no case ended in an error (an OOM, a missing kernel, a failed fused attention);
- on CUDA: the run's matmul peak of the main dtype is a fast path, every FLOP case's MFU lies
  in (0, 1.05] (an MFU above a same-run peak means unsynchronised timing), and every
  train case has a CUDA allocator memory figure above zero.
"""

from __future__ import annotations

from pathlib import Path

from gpucheck.context import Ctx

# Workloads whose FLOPs are analytic matmul counts at the case's dtype: their MFU against the
# same-run peak of that dtype cannot pass 1 (5% for timing noise) unless timing is not
# synchronised. (The tokenizer and FID cases' convolutions may run TF32 against an fp32 peak.)
ANALYTIC = ("vit_train", "vit_infer", "mae_encoder", "dit_train", "dit_infer")
MFU_MAX = 1.05
HEADLINE_TARGETS = ("gpu_mfu_s_p1", "memory_ratio", "scaling_memory", "scaling_time",
                    "data_loading", "bf16_speedup")


def _planned(ctx: Ctx, select) -> set[str]:
    from benchsuite.plan import get_profile

    return {c.id for c in get_profile(ctx.bench_suite).cases if select is None or select(c)}


def _cuda_problems(doc: dict) -> list[str]:
    out = []
    main = doc["dtypes"][0]
    if not doc["peaks"].get(main, {}).get("fast_path"):
        out.append(f"no fast {main} matmul peak")
    for r in doc["results"]:
        if r["status"] != "ok":
            continue
        mfu = r.get("mfu")
        if r["workload"] in ANALYTIC and (mfu is None or not 0 < mfu <= MFU_MAX):
            out.append(f"{r['id']}: MFU {mfu} outside (0, {MFU_MAX}]")
        if r["workload"] == "vit_train" and (r.get("mem_kind") != "cuda_max_memory_allocated"
                                             or not (r.get("mem_workload_mb") or 0) > 0):
            out.append(f"{r['id']}: no CUDA memory figure ({r.get('mem_kind')})")
    return out


def _summary_line(doc: dict, targets: dict) -> str:
    res = doc["results"]
    ok = sum(r["status"] == "ok" for r in res)
    skipped = sum(r["status"] == "skipped" for r in res)
    parts = [f"{ok}/{len(res)} cases ok" + (f", {skipped} skipped" if skipped else "")]
    main = doc["dtypes"][0]
    if main in doc["peaks"]:
        parts.append(f"{main} peak {doc['peaks'][main]['flops_per_s'] / 1e12:,.2f} TFLOP/s")
    for key in ("gpu_mfu_s_p1", "memory_ratio", "scaling_memory"):
        t = targets.get(key)
        if t and t["status"] not in ("N/A", "PENDING"):
            parts.append(f"{key} {t['measured'].split(' (')[0]} [{t['status']}]")
    return ", ".join(parts)


def judge_bench(doc: dict, path: Path, ctx: Ctx, select=None) -> dict:
    ran = {r["id"] for r in doc["results"]}
    missing = sorted(_planned(ctx, select) - ran)
    errors = [r for r in doc["results"] if r["status"] == "error"]
    problems = []
    if missing:
        problems.append(f"{len(missing)} case(s) not reached before the deadline "
                        f"(first: {missing[0]})")
    if errors:
        problems.append(f"{len(errors)} case(s) failed: " + "; ".join(
            f"{r['id']}: {r['error']}" for r in errors[:3]))
    if doc["device"] == "cuda":
        problems += _cuda_problems(doc)
    targets = {t["key"]: t for t in doc["targets"]}
    figures = {"json": str(path), "md": str(path.with_suffix(".md")), "complete": doc["complete"],
               "duration_s": doc["duration_s"], "not_reached": missing,
               "errors": [r["id"] for r in errors],
               "targets": {k: {"status": t["status"], "measured": t["measured"]}
                           for k, t in targets.items() if k in HEADLINE_TARGETS}}
    detail = _summary_line(doc, targets) + f"; {path.name}"
    if problems:  # the figures still go to the summary
        return {"status": "fail", "detail": "; ".join(problems[:4]) + f" ({path.name})",
                "figures": {**figures, "problems": problems}}
    return {"detail": detail, "figures": figures}
