"""`pixbench verify`: did this run of the pipeline reproduce the committed reference results?

The reference, reports/reference/<profile>.json, holds every result number (the task table's `results`) of
every run of the sweep it was made with, per group (task, size, patch; seeds pooled), with the
seeds, spec digests, git SHAs and the machine kind that produced them. `pixbench verify`
collects the same numbers from the runs of the *current* sweep (config.pipeline.sweep_runs),
judges each cell bitwise (same machine kind and spec) or statistically (compare.py), prints
"reproduced k of n cells" and every departure, writes reports/verify/<profile>.json, and fails
(exit 2) on a departure. `--record` writes the reference from the current runs.
"""

from __future__ import annotations

from pathlib import Path

from pixbench.config import Params, Paths
from pixbench.config.pipeline import sweep_runs
from pixbench.errors import UserError
from pixbench.runio import atomic_write_json, git_state, read_json
from pixbench.verify.compare import describe, judge
from pixbench.verify.conclusions import check as check_conclusions
from pixbench.verify.conclusions import conclude, run_gate
from pixbench.verify.machine import describe as describe_kind
from pixbench.verify.machine import machine_kind, same_kind, this_machine

FORMAT = 1
COUNTS = ("reproduced", "cells", "departures", "no_reference", "bitwise")


def reference_path(paths: Paths, profile: str) -> Path:
    return Path(paths.reports_dir) / "reference" / f"{profile}.json"


def result_path(paths: Paths, profile: str) -> Path:
    """Every cell's verdict (reports/verify/<profile>.json)."""
    return Path(paths.reports_dir) / "verify" / f"{profile}.json"


def metrics_path(paths: Paths, profile: str) -> Path:
    """The counts alone (reports/verify/<profile>.counts.json), beside every verdict."""
    return Path(paths.reports_dir) / "verify" / f"{profile}.counts.json"


def _write(paths: Paths, profile: str, result: dict) -> None:
    atomic_write_json(result_path(paths, profile), result)
    atomic_write_json(metrics_path(paths, profile),
                      {k: int(v) for k, v in result.items() if k in COUNTS and v is not None})


def collect(params: Params, paths: Paths, here: dict, tasks: dict) -> dict:
    """The result numbers of every run of the current sweep (`tasks`: the task table, whose
    `results` name them), grouped, with the machine kind, each run's validity-gate facts
    (conclusions.run_gate) and the pinned instruments. Refuses a missing run or one made with
    other settings (its spec digest)."""
    groups, manifests, missing, shas = {}, [], [], set()
    for run in sweep_runs(params):
        results = tasks[run.task].results
        if not results:
            continue
        run_dir = paths.run_dir(params.profile, run.run_id)
        if not (run_dir / "metrics.json").exists():
            missing.append(run.run_id)
            continue
        m = read_json(run_dir / "metrics.json", "metrics")
        if m.get("spec_digest") != run.spec.digest():
            raise UserError(f"{run_dir}: made with other settings than params.yaml (spec "
                            "digest); re-run it (dvc repro) or remove it")
        if m.get("pretrained") and run.task == "vq":
            continue  # an imported tokenizer trained nothing: vq-eval judges it
        absent = [k for k in results if not isinstance(m.get(k), (int, float))]
        if absent:
            raise UserError(f"{run_dir / 'metrics.json'}: no number for {', '.join(absent)}")
        man = read_json(run_dir / "manifest.json", "manifest") \
            if (run_dir / "manifest.json").exists() else {}
        manifests.append(man)
        shas.add(f"{man.get('git_sha')}{'+dirty' if man.get('git_dirty') else ''}")
        curve = run_dir / "curve.json"
        rows = read_json(curve, "curve") if curve.is_file() else None
        entry = groups.setdefault(run.group, {"task": run.task, "runs": [],
                                              "shared": tasks[run.task].shared_upstream})
        entry["runs"].append({"run_id": run.run_id, "seed": run.seed,
                              "spec_digest": m["spec_digest"],
                              "values": {k: m[k] for k in results},
                              "gate": run_gate(m, rows if isinstance(rows, list) else None)})
    if missing:
        raise UserError(f"{len(missing)} run(s) of the current sweep have no results "
                        f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}) under "
                        f"{paths.runs_dir}/{params.profile}: run `dvc repro` first")
    return {"format": FORMAT, "profile": params.profile, "machine": machine_kind(manifests, here),
            "git_sha": sorted(shas), "seeds": _seeds(params), "groups": groups,
            "instruments": _pinned(params)}


def _pinned(params: Params) -> dict | None:
    """The sha256 of the fixed tokenizer and FeatNet the generation cells use, or None."""
    gen = params.active.gen
    if gen is None:
        return None
    return {"tokenizer": gen.vq.pretrained.sha256 if gen.vq.pretrained else None,
            "featnet": gen.featnet.pretrained.sha256 if gen.featnet.pretrained else None}


def _seeds(params: Params) -> dict:
    out = {"sweep": params.sweep.seeds, "locality": params.locality.seeds}
    if params.mae_sweep is not None and params.active.mae is not None:
        out["mae_sweep"] = params.mae_sweep.seeds
    if params.gen_sweep is not None and params.active.gen is not None:
        out["gen_sweep"] = params.gen_sweep.seeds
    return out


def update_reference(params: Params, paths: Paths, fresh: dict) -> dict:
    path = reference_path(paths, params.profile)
    atomic_write_json(path, {**fresh, "written_at_git": git_state()})
    n = sum(len(g["runs"]) for g in fresh["groups"].values())
    print(f"wrote {path}: {len(fresh['groups'])} groups, {n} runs, made on "
          f"{describe_kind(fresh['machine'])}")
    return {"run_id": "verify", "path": str(path), "groups": len(fresh["groups"]), "runs": n}


def compare(params: Params, paths: Paths, fresh: dict, tasks: dict) -> dict:
    """Judge `fresh` against the reference, its conclusions first, then its numbers; write and
    print the verdicts; the result dict."""
    ref_file = reference_path(paths, params.profile)
    out = result_path(paths, params.profile)
    if not ref_file.exists():
        return _no_reference(params, paths, ref_file)
    ref = _read_reference(ref_file, fresh)
    try:
        bitwise = same_kind(ref["machine"], fresh["machine"])
        cells = judge(ref, fresh, params.verify, bitwise)
        checks = check_conclusions([c.as_dict() for c in conclude(ref["groups"],
                                                                   params.verify.alpha, tasks)],
                                   conclude(fresh["groups"], params.verify.alpha, tasks))
    except (KeyError, TypeError, AttributeError) as exc:  # a hand-edited or truncated file
        raise UserError(f"{ref_file}: malformed reference ({type(exc).__name__}: {exc}); "
                        "rewrite it with `pixbench verify --record`") from None
    judged = [c for c in cells if c.ok is not None]
    departed = [c for c in judged if not c.ok]
    broken = [c for c in checks if not c["held"]]
    print(f"reference: {describe_kind(ref['machine'])}, git {', '.join(ref['git_sha'])}")
    print(f"fresh:     {describe_kind(fresh['machine'])}, git {', '.join(fresh['git_sha'])}")
    print(f"conclusions: {len(checks) - len(broken)} of {len(checks)} significant conclusions "
          "of the reference held")
    for c in checks:
        print(f"{'held    ' if c['held'] else 'BROKEN  '}{c['statement']}: {c['why']}")
    print("same machine kind: bitwise equality expected where the spec is the same" if bitwise
          else "another machine kind: tolerance from the reference's seed and cross-kind spread")
    for cell in cells:
        print(describe(cell))
    summary = (f"{len(checks) - len(broken)} of {len(checks)} conclusions held; reproduced "
               f"{len(judged) - len(departed)} of {len(judged)} cells")
    print(summary + (f"; {len(departed)} departed" if departed else ""))
    result = {"profile": params.profile, "reference": str(ref_file), "bitwise": bitwise,
              "reproduced": len(judged) - len(departed), "cells": len(judged),
              "departures": len(departed), "no_reference": len(cells) - len(judged),
              "conclusions": len(checks), "conclusions_held": len(checks) - len(broken),
              "machine": fresh["machine"], "reference_machine": ref["machine"],
              "conclusion_checks": checks, "results": [c.as_dict() for c in cells]}
    _write(paths, params.profile, result)
    if departed or broken:
        what = [f"{c['key']} ({c['why'].split(':')[0]})" for c in broken]
        what += [f"{c.group} {c.metric}" for c in departed]
        raise UserError(f"verify: {summary}; departed: " + ", ".join(what) + f" (see {out})")
    return {"run_id": "verify", "reproduced": result["reproduced"], "cells": result["cells"],
            "conclusions_held": result["conclusions_held"], "departures": 0, "path": str(out)}


def _no_reference(params: Params, paths: Paths, ref_file: Path) -> dict:
    """A profile that never had a reference (a new dataset): a distinct, visible outcome. A
    reference that git knows but the disk lacks is missing evidence: refused."""
    if _tracked(ref_file):
        raise UserError(f"{ref_file}: the committed reference is missing; restore it "
                        f"(git checkout -- {ref_file}) or rewrite it with "
                        "`pixbench verify --record`")
    print(f"no reference for profile {params.profile} ({ref_file}): nothing to compare; "
          "write one with `pixbench verify --record`")
    result = {"profile": params.profile, "reference": None, "reproduced": 0, "cells": 0,
              "departures": 0}
    _write(paths, params.profile, result)
    return {"run_id": "verify", **result, "path": str(result_path(paths, params.profile))}


def _tracked(path: Path) -> bool:
    """Whether git tracks `path` (False outside a git work tree)."""
    import subprocess

    path = Path(path).absolute()
    cwd = next(p for p in path.parents if p.is_dir())
    try:
        res = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=cwd,
                             capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def _read_reference(ref_file: Path, fresh: dict) -> dict:
    """The reference, refused when of another format or when it lacks a group of the current
    sweep (evidence lost, or a sweep that grew since it was written)."""
    ref = read_json(ref_file, "reference")
    if ref.get("format") != FORMAT or not isinstance(ref.get("groups"), dict):
        raise UserError(f"{ref_file}: not a pixbench reference of format {FORMAT}; rewrite it "
                        "with `pixbench verify --record`")
    lost = [g for g in fresh["groups"] if g not in ref["groups"]]
    if lost:
        raise UserError(f"{ref_file}: no reference for {', '.join(lost[:3])}"
                        f"{', ...' if len(lost) > 3 else ''} (lost from the reference, or the "
                        "sweep grew): restore it or rewrite it with `pixbench verify "
                        "--record`")
    return ref


def run(spec, paths: Paths, *, tasks: dict, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """The `verify` task (a VerifySpec); `tasks`: the task table."""
    from pixbench.config import load_params

    from pixbench.config.cells import check_study_file

    params = load_params(spec.params_file)
    check_study_file(params, spec.params_file)
    params = params.switch(spec.profile)
    fresh = collect(params, paths, this_machine(), tasks)
    if spec.update_reference:
        return update_reference(params, paths, fresh)
    if params.verify is None:
        raise UserError(f"{spec.params_file}: no `verify` section: no tolerance to judge by")
    return compare(params, paths, fresh, tasks)
