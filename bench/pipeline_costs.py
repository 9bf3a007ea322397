"""Where a classification cell's CPU time goes, and the fused-AdamW A/B
(reports/bench/pipeline-speed.md). CPU time (time.process_time), so a shared machine's load
inflates wall time but hardly these figures. Run from the repo root, one thread:

    OMP_NUM_THREADS=1 python bench/pipeline_costs.py breakdown 4   # one cell, by part
    OMP_NUM_THREADS=1 python bench/pipeline_costs.py adamw         # optimiser step A/B
"""

from __future__ import annotations

import json
import sys
import time

T0 = time.process_time()


def breakdown(patch: int) -> dict:
    """The cell's CPU by part: the process's imports, then the run with its pieces timed."""
    import pixbench.cli  # noqa: F401  (what a stage's process imports before the run)
    import pixbench.launch  # noqa: F401
    from pixbench.config import Paths, load_params, make_classify_spec
    from pixbench.tasks import runner
    from pixbench.tasks.classify import engine
    from pixbench.tasks.classify import run as classify

    import timm.models.vision_transformer  # noqa: F401
    imports = time.process_time() - T0
    parts: dict[str, float] = {}

    def timed(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                parts[label] = parts.get(label, 0.0) + time.process_time() - t
        setattr(owner, name, wrapper)

    for owner, name, label in [
            (classify.Cell, "step", "training steps"),
            (classify.Cell, "row", "curve points"),
            (classify.Cell, "evaluate", "final evaluation"),
            (classify, "measure_train", "throughput probe: train"),
            (classify, "measure_inference", "throughput probe: inference"),
            (engine, "open_live", "dvclive open (incl. its import)"),
            (classify, "load_data", "data load"),
            (runner.Run, "_save", "checkpoint writes")]:
        timed(owner, name, label)
    spec = make_classify_spec(load_params("params.yaml"), size="xxs", patch=patch, seed=0)
    t = time.process_time()
    classify.run(spec, Paths(), stale="restart", progress=False)
    return {"imports": imports, "run": time.process_time() - t, **parts}


def adamw_ab(reps: int = 7, steps: int = 20) -> dict:
    """Median ms of CPU per train step and per optimiser step, for-loop vs fused AdamW,
    interleaved so both see the same machine load."""
    import torch
    import torch.nn.functional as F

    from pixbench.models.vit import vit
    from pixbench.tasks.optim import param_groups

    out = {}
    for patch in (12, 4, 1):
        runs = {}
        for fused in (False, True):
            torch.manual_seed(0)
            m = vit(size="xxs", patch=patch, image_size=12, in_chans=1, num_classes=10)
            runs[fused] = (m, torch.optim.AdamW(param_groups(m, 0.05), lr=1e-3,
                                                betas=(0.9, 0.99), fused=fused), [])
        x, y = torch.randn(64, 1, 12, 12), torch.randint(0, 10, (64,))  # (B, C, H, W), (B,)
        for _ in range(reps if patch > 1 else 3):
            for m, opt, times in runs.values():
                step = optim = 0.0
                for _ in range(steps):
                    t0 = time.process_time()
                    loss = F.cross_entropy(m(x), y, label_smoothing=0.1)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                    t1 = time.process_time()
                    opt.step()
                    t2 = time.process_time()
                    step, optim = step + t2 - t0, optim + t2 - t1
                times.append((1e3 * step / steps, 1e3 * optim / steps))
        for fused, (_, _, times) in runs.items():
            med = sorted(times)[len(times) // 2]
            out[f"p{patch} {'fused' if fused else 'for-loop'}"] = {"step_ms": med[0],
                                                                   "optimizer_ms": med[1]}
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    res = breakdown(int(sys.argv[2])) if what == "breakdown" else adamw_ab()
    print(json.dumps(json.loads(json.dumps(res), parse_float=lambda v: round(float(v), 2)),
                     indent=1))
