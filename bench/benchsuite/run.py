"""`run_suite`: every case of a profile, then the derived figures, targets, cost and files.

    from benchsuite.run import run_suite
    run_suite("cpu")            # -> reports/bench/cpu-fp32-bf16-torch2.14.1.json (+ .md, plots)

pytest (bench/conftest.py) drives the same `BenchSession` case by case and calls `finalize`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from benchsuite.plan import PENDING_WORKLOADS, get_profile

DEFAULT_OUT = Path("reports/bench")


def run_suite(profile: str = "cpu", out_dir: Path = DEFAULT_OUT,
              log: Callable[[str], None] | None = None, threads: int | None = None, *,
              select: Callable[[object], bool] | None = None,
              deadline_s: float | None = None) -> Path:
    """Run a profile ("quick", "cpu", "gpu", "gpu-check" or "auto") and write its files;
    returns the JSON.

    threads: torch intra-op threads; default: the profile's, else on a CPU the cores that are
    idle at the start (see env.auto_threads). select: run only the cases it accepts;
    deadline_s: start no case after this many seconds. Either leaves cases of the profile out,
    so the files are named `-partial` (they never overwrite a whole run's)."""
    from benchsuite.session import BenchSession

    prof = get_profile(profile)
    stop = None if deadline_s is None else time.monotonic() + deadline_s
    session = BenchSession(prof, log=log, threads=threads)
    try:
        for dtype in prof.dtypes:
            session.peak(dtype)
        for case in prof.cases:
            if select is not None and not select(case):
                continue
            if stop is not None and time.monotonic() > stop:
                session.log(f"{case.id}: not reached ({deadline_s:.0f} s deadline)")
                continue
            session.run_case(case)
    finally:
        session.close()
    return finalize(session, out_dir)


def planned_feeds(prof) -> set[str]:
    """Groups and workloads the profile has cases for, and "memory_pair" when it has a p=1 and
    a p=2 train case at one batch (what the memory-ratio target needs)."""
    out = {c.group for c in prof.cases} | {c.workload for c in prof.cases}
    patches: dict[tuple, set[int]] = {}
    for c in prof.cases:
        if c.workload == "vit_train":
            p = c.params
            patches.setdefault((p["size"], p["image_size"], p["batch"], p["dtype"]),
                               set()).add(p["patch"])
    if any({1, 2} <= v for v in patches.values()):
        out.add("memory_pair")
    return out


def finalize(session, out_dir: Path = DEFAULT_OUT) -> Path:
    """Derive, judge and write what the session measured; partial runs get a `-partial` name."""
    from benchsuite import derive
    from benchsuite.costs import cost_estimate
    from benchsuite.env import env_name, load_average
    from benchsuite.report import SCHEMA, write_all
    from benchsuite.targets import all_targets
    from benchsuite.workloads import WORKLOADS

    prof, device = session.profile, session.device
    records = [session.records[k] for k in sorted(session.records)]
    planned = {c.id for c in prof.cases}
    peaks = session.peaks
    main = prof.dtypes[0] if prof.dtypes[0] in peaks and peaks[prof.dtypes[0]]["fast_path"] \
        else "fp32"
    env = {**session.env, "load_average_end": load_average()}
    doc = {
        "schema": SCHEMA, "env_name": env_name(prof.name, device, prof.dtypes),
        "profile": prof.name, "device": device, "dtypes": list(prof.dtypes),
        "complete": planned <= set(session.records), "duration_s": session.elapsed_s(),
        "environment": env, "peaks": peaks, "results": records,
        "derived": {
            "mfu_by_size": {d: derive.mfu_by_size(records, d) for d in prof.dtypes},
            "memory_ratios": derive.memory_ratios(records),
            "bf16_speedups": derive.bf16_speedups(records),
            "data_loading": derive.data_headroom(records),
            "scaling": derive.scaling(records),
            "breakdown": derive.breakdown_summary(records, peaks),
        },
        "cost_estimate": cost_estimate(records, peaks, device, main),
        "targets": all_targets(records, peaks, device, env, planned_feeds(prof)),
        "pending_workloads": {k: v for k, v in PENDING_WORKLOADS.items() if k not in WORKLOADS},
    }
    return write_all(doc, out_dir)
