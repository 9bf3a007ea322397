"""Machine kinds emulated on one machine: the default pipeline under several kernel settings.

    python bench/machine_kinds.py [--settings native,aten-avx2,onednn-avx2,mkl-compatible]
                                  [--work DIR] [--keep] [--update-reference]

Float results differ between x86 machine kinds because other kernels run: ATen's dispatch
capability (AVX2 vs AVX-512), oneDNN's ISA, MKL's code path (MKL takes a generic branch on AMD)
and the intra-op thread count (another GEMM reduction split). Each can be forced on one
machine by an environment variable (issue 23: each changed the bits of a 50-step ViT run), so
each SETTING here is a clone of the committed HEAD run end to end as `make repro` runs it
(`pixbench study run`: every cell, report, verify) with that variable set.

Per setting it records: wall time, the verify verdict against the committed reference, every
conclusion of the study (verify/conclusions.py) and every headline number (mean ± std per
cell). Then the cross-kind spread of each cell (the sample std of all its values under every
setting, seeds and kinds pooled) goes into the reference's `cross_kind`, and with
--update-reference the first setting's results become the reference (the committed reference
is made on one kind; the spread says how far other kinds move). Every setting is then verified
again against that reference; both verdicts are written.

Writes reports/bench/machine-kinds.json and .md (and with --update-reference,
reports/reference/<profile>.json, dvc.lock and the pipeline's reports from the first setting).
Run it on a quiet machine: it takes about one `make repro` per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "native": {},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
}
STUDY = ["pixbench", "study", "run"]
# The pipeline outputs a run of the default writes into the checkout (dvc.yaml outs, cache false).
OUTPUTS = ("dvc.lock", "reports/REPORT.md", "reports/report.html", "reports/figures",
           "reports/metrics", "reports/curves", "reports/verify")


def env_for(setting: dict, repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXBENCH_", "ATEN_",
                                                                     "ONEDNN_", "MKL_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PYTHONPATH=str(repo / "src"),
               **setting)
    return env


def run_setting(name: str, repo: Path, root: Path) -> dict:
    """One setting end to end in its clone: the study run's exit code, wall time, and log."""
    subprocess.run(["git", "clone", "-q", str(root), str(repo)], check=True)
    env = env_for(SETTINGS[name], repo)
    t0 = time.perf_counter()
    res = subprocess.run(STUDY, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (repo / "study.log").write_text(res.stdout + res.stderr)
    return {"setting": name, "env": SETTINGS[name], "exit": res.returncode, "wall_s": wall,
            "verify_committed": _verify_lines(res.stdout + res.stderr)}


def _verify_lines(text: str) -> list[str]:
    keep = ("conclusions", "reproduced", "BROKEN", "DEPARTS", "error:")
    return [ln for ln in text.splitlines() if ln.startswith(keep) or " held;" in ln]


def results(repo: Path) -> dict:
    """Groups (verify's collect), conclusions and the machine kind of one setting's runs."""
    code = ("import json, os, sys; sys.path.insert(0, 'src')\n"
            "from pixbench.config import Paths, load_params\n"
            "from pixbench.tasks.table import TASKS\n"
            "from pixbench.verify import collect\n"
            "from pixbench.verify.conclusions import conclude\n"
            "from pixbench.verify.machine import this_machine\n"
            "p = load_params('params.yaml')\n"
            "fresh = collect(p, Paths(), this_machine(), TASKS)\n"
            "fresh['conclusions'] = [c.as_dict() for c in conclude(fresh['groups'], "
            "p.verify.alpha, TASKS)]\n"
            "print(json.dumps(fresh))\n")
    env = env_for({}, repo)
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cross_kind(all_results: dict[str, dict]) -> dict:
    """{group: {metric: {sd, n, settings}}}: every value of a cell under every setting."""
    out: dict = {}
    first = next(iter(all_results.values()))
    for group, entry in first["groups"].items():
        for metric in entry["runs"][0]["values"]:
            vals = [r["values"][metric] for res in all_results.values()
                    for r in res["groups"].get(group, {}).get("runs", [])]
            if len(vals) > 1:
                out.setdefault(group, {})[metric] = {
                    "sd": statistics.stdev(vals), "n": len(vals),
                    "settings": sorted(all_results)}
    return out


def reverify(repo: Path, reference: Path) -> dict:
    """`pixbench verify` of one setting's runs against `reference` (copied into its clone)."""
    dest = repo / "reports" / "reference" / reference.name
    shutil.copyfile(reference, dest)
    name = next(k for k, v in SETTINGS.items() if repo.name == k)
    res = subprocess.run(["pixbench", "verify"], cwd=repo, env=env_for(SETTINGS[name], repo),
                         capture_output=True, text=True)
    verdict = json.loads((repo / "reports" / "verify" / reference.name).read_text())
    return {"exit": res.returncode, "lines": _verify_lines(res.stdout + res.stderr),
            "conclusions": verdict.get("conclusions"),
            "conclusions_held": verdict.get("conclusions_held"),
            "cells": verdict.get("cells"), "reproduced": verdict.get("reproduced"),
            "checks": verdict.get("conclusion_checks", [])}


def headline(res: dict) -> dict:
    return {g: {m: [r["values"][m] for r in e["runs"]] for m in e["runs"][0]["values"]}
            for g, e in res["groups"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="native,aten-avx2,onednn-avx2,mkl-compatible")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the clones")
    ap.add_argument("--update-reference", action="store_true")
    ap.add_argument("--repo", type=Path, default=ROOT, help="the git checkout to rehearse")
    args = ap.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"error: --settings: unknown {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    work = args.work or Path(tempfile.mkdtemp(prefix="pixbench-kinds-"))
    runs, all_res = [], {}
    for name in names:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {SETTINGS[name]}", flush=True)
        row = run_setting(name, work / name, args.repo)
        all_res[name] = results(work / name)
        runs.append(row)
        print(f"  exit {row['exit']}, {row['wall_s']:.0f} s; " + "; ".join(
            row["verify_committed"][-2:]), flush=True)
    finish(work, names, runs, all_res, args.update_reference, args.repo)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def finish(work: Path, names: list[str], runs: list[dict], all_res: dict, update: bool,
           root: Path) -> None:
    from machine_kinds_report import write_report

    profile = all_res[names[0]]["profile"]
    ref_path = root / "reports" / "reference" / f"{profile}.json"
    if update:
        ref = {k: v for k, v in all_res[names[0]].items() if k != "conclusions"}
        ref["written_at_git"] = _git_head(root)
    else:
        ref = json.loads(ref_path.read_text())
    ref["cross_kind"] = cross_kind(all_res)
    tmp = ref_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ref, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, ref_path)
    for row in runs:
        row["verify_final"] = reverify(work / row["setting"], ref_path)
        row["conclusions"] = all_res[row["setting"]]["conclusions"]
        row["headline"] = headline(all_res[row["setting"]])
        row["machine"] = all_res[row["setting"]]["machine"]
    if update:  # the pipeline's outputs of the reference setting, re-verified
        first = work / names[0]
        subprocess.run(["dvc", "repro", "verify"], cwd=first, env=env_for({}, first), check=True,
                       capture_output=True)
        for rel in OUTPUTS:
            src, dst = first / rel, root / rel
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
            elif src.exists():
                shutil.copyfile(src, dst)
    write_report(root / "reports" / "bench", runs, ref["cross_kind"])


def _git_head(root: Path) -> dict:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                         text=True).stdout.strip()
    return {"git_sha": sha, "git_dirty": False}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
