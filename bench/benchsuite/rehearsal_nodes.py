"""Memory per node of an ImageNet-1k prepare (issue 26), from a scale rehearsal (rehearsal.py):
the per-worker peak measured here, extrapolated per core count, and the plan's memory.

A prepare runs one decode worker per core by default, so its memory is the parent's plus one
worker's per core: the 2-worker peak this VM measures says nothing about a 32-, 64- or
128-core node by itself (the earlier report paired a 2-worker peak with a 32-core wall time).
Extrapolated peak = the parent's measured peak + the parent's plan state at ImageNet-1k's N
(plan_state.py, measured) + cores x (the largest decode worker's measured peak + the bytes
by which a chunk at ImageNet-1k's N on that node is larger than the measured run's: since
issue 26 chunks shrink to give every worker 4, so a small tree's 28px chunks are smaller than a
32-core node's). Worker RSS counts the pages it shares with the parent (interpreter, numpy,
PIL): an upper bound.
"""

from __future__ import annotations

IMAGENET = 1_281_167 + 50_000
CORES = (32, 64, 128)
PEAK_GB_MAX = 4.0  # issue 15's target for an ImageNet-1k prepare, now on a 32-core node
MIB, GIB = 1 << 20, 1 << 30


def _state_mib(state: dict | None, size: int) -> float:
    """The parent's plan-state peak (all phases) at the largest N measured (ImageNet-1k)."""
    if not state:
        return 0.0
    p = state["points"][-1]
    return max(p["make_plan"], p["decode"], p.get(f"finish_{size}px", 0)) / MIB


def _chunk_growth_mib(code: str, r: dict, cores: int) -> float:
    """How much larger a worker's chunk is at ImageNet-1k on `cores` than in row `r` (3
    channels, as planned). The code before issue 26 always used the cap: none."""
    if code != "branch":
        return 0.0
    from pixbench.data.stream import chunk_len

    size = r["size"]
    measured = chunk_len(size, 3, r["n_train"] + r["n_val"], max(1, r["workers_seen"]))
    return max(0, chunk_len(size, 3, IMAGENET, cores) - measured) * size * size * 3 / MIB


def per_core(doc: dict) -> list[dict]:
    """For each code (this one; `before` when measured) and size: measured per-process peaks
    at the largest N and the extrapolated node peak at each of CORES."""
    out = []
    states = {"branch": doc.get("plan_state"), "before": doc.get("before", {}).get("plan_state")}
    for code in ("before", "branch"):
        for size in (28, 256):
            rows = [r for r in doc["rows"] if r["code"] == code and r["size"] == size
                    and r["fast_decode"] is None and r.get("workers_seen")]
            if not rows:
                continue
            r = max(rows, key=lambda r: r["n_train"])
            state = _state_mib(states[code], size)
            base = r["parent_peak_mib"] + state
            out.append({"code": code, "size": size, "n_train": r["n_train"],
                        "workers_measured": r["workers_seen"],
                        "tree_peak_gib_measured": r["peak_rss_gib"],
                        "parent_peak_mib": r["parent_peak_mib"],
                        "worker_peak_mib": r["worker_peak_mib"],
                        "plan_state_imagenet_mib": round(state, 1),
                        "chunk_growth_mib": {str(c): round(_chunk_growth_mib(code, r, c), 1)
                                             for c in CORES},
                        "node_peak_gib": {str(c): round(
                            (base + c * (r["worker_peak_mib"] + _chunk_growth_mib(code, r, c)))
                            * MIB / GIB, 2) for c in CORES}})
    return out


def targets(nodes: list[dict]) -> list[dict]:
    """ImageNet-1k on one 32-core node (extrapolated, this code) under PEAK_GB_MAX."""
    out = []
    for n in nodes:
        if n["code"] == "branch":
            gb = n["node_peak_gib"]["32"] * GIB / 1e9
            out.append({"target": f"ImageNet-1k peak memory, one 32-core node, {n['size']}px "
                                  f"< {PEAK_GB_MAX} GB (extrapolated)",
                        "measured": f"{gb:.2f} GB", "pass": gb < PEAK_GB_MAX})
    return out


def lines(doc: dict, nodes: list[dict]) -> list[str]:
    m = doc["machine"]
    head = [
        "## Memory per node: measured per worker, extrapolated per core count", "",
        f"Measured on this machine ({m['cpu']}, {m['cores']} cores, a shared VM) at the default "
        "worker count (one per core: "
        + ", ".join(sorted({str(n["workers_measured"]) for n in nodes})) + " here), largest N. "
        "**Extrapolated**, not measured: the 32/64/128-core columns = parent peak + the "
        "parent's plan state at ImageNet-1k (measured, `plan_state`) + cores x (the largest "
        "worker's peak + how much larger its chunk is at ImageNet-1k on that node: "
        "`chunk +MiB`, computed). `before`: " + doc.get("before", {}).get("label", "-")
        + ". Since issue "
        "26 `pixbench data prepare` caps the workers to a memory budget (`--mem-gb`, default "
        "3/4 of the SLURM job's --mem or of MemAvailable; a note says when), so a node runs "
        "fewer workers rather than run out of memory.", "",
        "| code | size | tree peak GiB (measured) | parent MiB | worker MiB | plan state MiB | "
        "chunk +MiB (32/64/128) | " + " | ".join(f"{c} cores GiB" for c in CORES) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(CORES)]
    body = [f"| {n['code']} | {n['size']} | {n['tree_peak_gib_measured']} | "
            f"{n['parent_peak_mib']} | {n['worker_peak_mib']} | {n['plan_state_imagenet_mib']} | "
            + "/".join(str(n["chunk_growth_mib"][str(c)]) for c in CORES) + " | "
            + " | ".join(str(n["node_peak_gib"][str(c)]) for c in CORES) + " |" for n in nodes]
    return head + body + [""] + _plan_lines(doc)


def _plan_lines(doc: dict) -> list[str]:
    """make_plan's memory on real files, and the plan state at ImageNet-1k, before/after."""
    out = ["## The plan: memory of the submitting process", "",
           "`make_plan` in a fresh process on real trees of empty files (100 classes): peak RSS "
           "over the post-import baseline and wall time (measured).", "",
           "| code | N train | N val | make_plan peak MiB | wall s |", "|---|---|---|---|---|"]
    codes = [("branch", doc)] + ([("before", doc["before"])] if "before" in doc else [])
    for code, d in codes:
        out += [f"| {code} | {r['n_train']} | {r['n_val']} | {r['make_plan'] / MIB:.1f} | "
                f"{r['wall_s']} |" for r in d.get("plan_on_files", [])]
    out += ["", "Plan state at ImageNet-1k's N (synthetic listing, real make_plan; "
            "`plan_state`): bytes per image of make_plan, and of the parent's peak to finish.", "",
            "| code | make_plan B/img | to finish 28px B/img | to finish 256px B/img |",
            "|---|---|---|---|"]
    for code, d in codes:
        st = d.get("plan_state")
        if st:
            per = st["bytes_per_image"]
            out.append(f"| {code} | {st.get('make_plan_bytes_per_image', '-')} | "
                       f"{per.get('28px')} | {per.get('256px')} |")
    return out + [""]
