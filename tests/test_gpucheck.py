"""The GPU validation kit (tools/gpucheck) in its CPU form, as CI runs it, plus its harness.

- the CPU form end to end through the real command (`python -m gpucheck --cpu` with the
  Makefile's TOOLS_PATH: tools/, bench/ and src/ on the path): every
  step passes, the summary and the benchmark files are written, exit code 0, and nothing the
  steps import is missing from the GPU image + carried wheels. Two cuts keep it near 20 s on
  two cores: `--skip ddp-2` (2 gloo ranks are tests/test_ddp*.py's) and `--bench-select` (the
  whole quick suite is bench/test_bench_smoke.py's);
- a planted broken step: exactly that step fails, the others pass, exit code 1;
- the harness on fake steps: raise, hang past its limit (its child process killed with it),
  crash, exit, skip, blocked, budget spent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from gpucheck import steps as gc_steps
from gpucheck.harness import PLANT_ENV, Harness, Step, StepSkipped

ALL_CPU_STEPS = [s.name for s in gc_steps.all_steps(cpu=True)]
ROOT = Path(__file__).resolve().parents[1]
TOOLS_PATH = os.pathsep.join(str(ROOT / d) for d in ("tools", "bench", "src"))  # = Makefile's
BENCH_CASES = "vit_train/xxs-p1-8px,vit_train/xxs-p2-8px-fp32,dit_train/xxs-p1"


def run_kit(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[int, dict, str]:
    cmd = [sys.executable, "-m", "gpucheck", "--cpu", "--out", str(tmp_path / "out"),
           "--work", str(tmp_path / "work"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {}),
                               "PYTHONPATH": os.pathsep.join(filter(None, (
                                   TOOLS_PATH, os.environ.get("PYTHONPATH"))))})
    found = list((tmp_path / "out").glob("gpu-check-summary-cpu-*.json"))
    assert len(found) == 1, proc.stdout + proc.stderr
    return proc.returncode, json.loads(found[0].read_text()), proc.stdout + proc.stderr


def by_name(doc: dict) -> dict[str, dict]:
    return {s["name"]: s for s in doc["steps"]}


def test_cpu_form_runs_every_step_and_passes(tmp_path):
    t0 = time.monotonic()
    rc, doc, out = run_kit(tmp_path, "--skip", "ddp-2", "--bench-select", BENCH_CASES,
                           "--jobs", "2")
    steps = by_name(doc)
    assert rc == 0, out
    assert doc["ok"] and doc["failed"] == [] and doc["exit_code"] == 0
    assert list(steps) == [n for n in ALL_CPU_STEPS if n != "ddp-2"]
    assert {s["status"] for s in steps.values()} == {"pass"}, out
    for name in ("classify-p1", "classify-p4", "mae-pretrain", "mae-finetune"):
        assert steps[name]["figures"]["precision"] == "fp32"  # the recipe's auto, on the CPU
    assert steps["classify-p1"]["figures"]["tokens"] == 64
    assert "gloo world 1" in steps["ddp-1"]["detail"]
    bench = steps["bench"]["figures"]
    assert bench["errors"] == [] and bench["not_reached"] == []
    assert Path(bench["json"]).name.startswith("quick-cpu-") and "-partial" in bench["json"]
    assert Path(bench["json"]).exists() and Path(bench["md"]).exists()
    if not doc["carry_version_drift"]:  # the venv holds the pinned versions: exact
        assert doc["imports_missing_on_target"] == []  # wheels.CARRY covers every import
    md = next((tmp_path / "out").glob("gpu-check-summary-cpu-*.md")).read_text()
    assert "**PASS**" in md and "| dit-eval |" in md
    assert (tmp_path / "work" / "runs" / "gpucheck" / "dit-xxs-p1-s0-eval" /
            "metrics.json").exists()
    assert time.monotonic() - t0 < 60


def test_planted_failure_fails_that_step_only(tmp_path):
    rc, doc, out = run_kit(tmp_path, "--only", "classify-p4,bf16-agreement,attention",
                           env={PLANT_ENV: "bf16-agreement:raise"})
    steps = by_name(doc)
    assert rc == 1, out
    assert doc["failed"] == ["bf16-agreement"] and doc["exit_code"] == 1
    assert sorted(doc["passed"]) == ["attention", "classify-p4", "data", "env"]
    assert steps["bf16-agreement"]["status"] == "fail"
    assert "planted failure" in steps["bf16-agreement"]["detail"]
    assert "planted failure" in steps["bf16-agreement"]["log_tail"]
    md = next((tmp_path / "out").glob("gpu-check-summary-cpu-*.md")).read_text()
    assert "**FAIL**: bf16-agreement" in md


# ------------------------------------------------------------------------- harness, fake steps


def ok(ctx):
    return {"detail": "fine", "figures": {"x": 1}}


def boom(ctx):
    raise ValueError("bad value\nsecond line")


def skipper(ctx):
    raise StepSkipped("not on this machine")


def crash(ctx):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def leave(ctx):
    os._exit(3)


def hang(ctx):
    """Starts a grandchild, records its pid, then hangs: the timeout must kill both."""
    child = subprocess.Popen(["sleep", "60"])
    Path(ctx.work, "grandchild.pid").write_text(str(child.pid))
    time.sleep(60)


def test_harness_statuses(tmp_path):
    steps = [Step("ok", ok, "p"), Step("boom", boom, "p"), Step("after-boom", ok, "p", ("boom",)),
             Step("skip", skipper, "p"), Step("crash", crash, "p"), Step("exit", leave, "p"),
             Step("hang", hang, "p", timeout_s=1.0), Step("needs-absent", ok, "p", ("nowhere",))]
    h = Harness(steps, SimpleNamespace(work=str(tmp_path)), tmp_path, jobs=2, budget_s=60.0)
    res = {r["name"]: r for r in h.run()}
    assert {k: r["status"] for k, r in res.items()} == {
        "ok": "pass", "boom": "fail", "after-boom": "blocked", "skip": "skip",
        "crash": "crash", "exit": "crash", "hang": "timeout", "needs-absent": "blocked"}
    assert res["ok"]["figures"] == {"x": 1}
    assert res["boom"]["detail"] == "ValueError: bad value"
    assert "signal 9" in res["crash"]["detail"] and "exit code 3" in res["exit"]["detail"]
    assert "blocked by boom (fail)" in res["after-boom"]["detail"]
    pid = int((tmp_path / "grandchild.pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text() \
        .split(")")[1].split()[0]  # killed with its step's process group


def test_harness_spent_budget_leaves_steps_not_run(tmp_path):
    steps = [Step("hang", hang, "p", timeout_s=1.0), Step("late", ok, "p", timeout_s=30.0)]
    res = Harness(steps, SimpleNamespace(work=str(tmp_path)), tmp_path, budget_s=3.0).run()
    assert [r["status"] for r in res] == ["timeout", "not-run"]


def test_select_adds_what_a_step_needs():
    steps = gc_steps.all_steps(cpu=True)
    names = [s.name for s in gc_steps.select(steps, ["dit-eval"], [])]
    assert names == ["env", "data", "vq", "featnet", "vq-encode", "dit", "dit-eval"]
    assert "bench" not in [s.name for s in gc_steps.select(steps, [], ["bench"])]
    with pytest.raises(ValueError, match="unknown step"):
        gc_steps.select(steps, ["nope"], [])


# ---------------------------------------------------------------------------------- pure parts


def test_check_params_are_the_recipes_with_small_overrides(tmp_path):
    from pixbench.config import load_params
    from gpucheck.data import FORMS, check_params, read_recipes

    recipes = read_recipes()
    for form in ("cpu", "gpu"):
        path = tmp_path / f"{form}.yaml"
        path.write_text(yaml.safe_dump(check_params(recipes, FORMS[form])))
        p = load_params(path).active
        assert p.classify.precision == recipes["classify"]["precision"] == "auto"
        assert p.classify.augment.model_dump() == recipes["classify"]["augment"]
        assert not p.data.allow_download and not p.gen.fid.inception
    assert FORMS["gpu"].image ** 2 == 1024  # classify at p=1: 1024 pixel tokens on the GPU


def test_judge_flags_errors_unreached_and_impossible_mfu(tmp_path):
    from gpucheck.context import Ctx
    from gpucheck.judge import judge_bench

    ctx = Ctx(cpu=False, work="w", out="o", params="p", bench_suite="gpu-check",
              bench_select=("vit_train/s-p1-32px-bf16",))
    rec = {"id": "vit_train/s-p1-32px-bf16-b128", "workload": "vit_train", "status": "ok",
           "mfu": 1.7, "flops_per_s": 1.0, "mem_kind": "cuda_max_memory_allocated",
           "mem_workload_mb": 10.0}
    doc = {"device": "cuda", "dtypes": ["bf16", "fp32"], "complete": False, "duration_s": 1.0,
           "peaks": {"bf16": {"fast_path": True, "flops_per_s": 7e14}}, "targets": [],
           "results": [rec]}
    select = (lambda c: any(s in c.id for s in ctx.bench_select))
    out = judge_bench(doc, tmp_path / "x.json", ctx, select)
    assert out["status"] == "fail" and "MFU 1.7" in out["detail"]
    out = judge_bench({**doc, "results": [{**rec, "mfu": 0.4}]}, tmp_path / "x.json", ctx,
                      select)
    assert "status" not in out and "1/1 cases ok" in out["detail"]
    out = judge_bench({**doc, "results": []}, tmp_path / "x.json", ctx, select)
    assert "1 case(s) not reached" in out["detail"]


def test_wheel_list_carries_only_what_the_image_lacks():
    from gpucheck import wheels

    names = [wheels.normalize(r.split("==")[0]) for r in wheels.CARRY]
    assert len(names) == len(set(names)) and all("==" in r for r in wheels.CARRY)
    assert set(names) & wheels.TARGET_IMAGE == {"timm"}  # pinned on purpose (version unknown)
    assert {"torch", "torchvision", "triton"} <= wheels.TARGET_IMAGE
