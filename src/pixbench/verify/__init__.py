"""`pixbench verify`: did this run of the pipeline reproduce the committed reference results?

The reference, reports/reference/<profile>.json, holds every result number (compare.RESULTS) of
every run of the sweep it was made with, per group (task, size, patch; seeds pooled), with the
seeds, spec digests, git SHAs and the machine kind that produced them. `pixbench verify`
collects the same numbers from the runs of the *current* sweep (config.pipeline.sweep_runs),
judges each cell bitwise (same machine kind and spec) or statistically (compare.py), prints
"reproduced k of n cells" and every departure, writes reports/verify/<profile>.json, and fails
(exit 2) on a departure. `--update-reference` writes the reference from the current runs.
"""

from __future__ import annotations

from pathlib import Path

from pixbench.config import Params, Paths
from pixbench.config.pipeline import sweep_runs
from pixbench.errors import UserError
from pixbench.runio import atomic_write_json, git_state, read_json
from pixbench.verify.compare import RESULTS, describe, judge
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
    """The counts alone, where `dvc metrics show` reads every stage's numbers."""
    return Path(paths.reports_dir) / "metrics" / profile / "verify.json"


def _write(paths: Paths, profile: str, result: dict) -> None:
    atomic_write_json(result_path(paths, profile), result)
    atomic_write_json(metrics_path(paths, profile),
                      {k: int(v) for k, v in result.items() if k in COUNTS and v is not None})


def collect(params: Params, paths: Paths, here: dict) -> dict:
    """The result numbers of every run of the current sweep, grouped, with the machine kind.
    Refuses a missing run or one made with other settings (its spec digest)."""
    groups, manifests, missing, shas = {}, [], [], set()
    for run in sweep_runs(params):
        if run.task not in RESULTS:
            continue
        run_dir = paths.run_dir(params.profile, run.run_id)
        if not (run_dir / "metrics.json").exists():
            missing.append(run.run_id)
            continue
        m = read_json(run_dir / "metrics.json", "metrics")
        if m.get("spec_digest") != run.spec.digest():
            raise UserError(f"{run_dir}: made with other settings than params.yaml (spec "
                            "digest); re-run it (dvc repro) or remove it")
        absent = [k for k in RESULTS[run.task] if not isinstance(m.get(k), (int, float))]
        if absent:
            raise UserError(f"{run_dir / 'metrics.json'}: no number for {', '.join(absent)}")
        man = read_json(run_dir / "manifest.json", "manifest") \
            if (run_dir / "manifest.json").exists() else {}
        manifests.append(man)
        shas.add(f"{man.get('git_sha')}{'+dirty' if man.get('git_dirty') else ''}")
        entry = groups.setdefault(run.group, {"task": run.task, "runs": []})
        entry["runs"].append({"run_id": run.run_id, "seed": run.seed,
                              "spec_digest": m["spec_digest"],
                              "values": {k: m[k] for k in RESULTS[run.task]}})
    if missing:
        raise UserError(f"{len(missing)} run(s) of the current sweep have no results "
                        f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}) under "
                        f"{paths.runs_dir}/{params.profile}: run `dvc repro` first")
    return {"format": FORMAT, "profile": params.profile, "machine": machine_kind(manifests, here),
            "git_sha": sorted(shas), "seeds": _seeds(params), "groups": groups}


def _seeds(params: Params) -> dict:
    out = {"sweep": params.sweep.seeds, "locality": params.locality.seeds,
           "mae_sweep": params.mae_sweep.seeds}
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


def compare(params: Params, paths: Paths, fresh: dict) -> dict:
    """Judge `fresh` against the reference; write and print the verdicts; the result dict."""
    ref_file = reference_path(paths, params.profile)
    out = result_path(paths, params.profile)
    if not ref_file.exists():  # a new dataset or profile: nothing to reproduce yet
        print(f"no reference for profile {params.profile} ({ref_file}): nothing to compare; "
              "write one with `pixbench verify --update-reference`")
        result = {"profile": params.profile, "reference": None, "reproduced": 0, "cells": 0,
                  "departures": 0}
        _write(paths, params.profile, result)
        return {"run_id": "verify", **result, "path": str(out)}
    ref = read_json(ref_file, "reference")
    if ref.get("format") != FORMAT or not isinstance(ref.get("groups"), dict):
        raise UserError(f"{ref_file}: not a pixbench reference of format {FORMAT}; rewrite it "
                        "with `pixbench verify --update-reference`")
    try:
        bitwise = same_kind(ref["machine"], fresh["machine"])
        cells = judge(ref, fresh, params.verify, bitwise)
    except (KeyError, TypeError, AttributeError) as exc:  # a hand-edited or truncated file
        raise UserError(f"{ref_file}: malformed reference ({type(exc).__name__}: {exc}); "
                        "rewrite it with `pixbench verify --update-reference`") from None
    judged = [c for c in cells if c.ok is not None]
    departed = [c for c in judged if not c.ok]
    print(f"reference: {describe_kind(ref['machine'])}, git {', '.join(ref['git_sha'])}")
    print(f"fresh:     {describe_kind(fresh['machine'])}, git {', '.join(fresh['git_sha'])}")
    print("same machine kind: bitwise equality expected where the spec is the same" if bitwise
          else "another machine kind: statistical tolerance from the seed spread")
    for cell in cells:
        print(describe(cell))
    summary = f"reproduced {len(judged) - len(departed)} of {len(judged)} cells"
    print(summary + (f"; {len(departed)} departed" if departed else ""))
    result = {"profile": params.profile, "reference": str(ref_file), "bitwise": bitwise,
              "reproduced": len(judged) - len(departed), "cells": len(judged),
              "departures": len(departed), "no_reference": len(cells) - len(judged),
              "machine": fresh["machine"], "reference_machine": ref["machine"],
              "results": [c.as_dict() for c in cells]}
    _write(paths, params.profile, result)
    if departed:
        raise UserError(f"verify: {summary}; departed: "
                        + ", ".join(f"{c.group} {c.metric}" for c in departed) + f" (see {out})")
    return {"run_id": "verify", "reproduced": result["reproduced"], "cells": result["cells"],
            "departures": 0, "path": str(out)}


def run(spec, paths: Paths, *, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """The `verify` task (a VerifySpec)."""
    from pixbench.config import load_params

    params = load_params(spec.params_file).model_copy(update={"profile": spec.profile})
    fresh = collect(params, paths, this_machine())
    if spec.update_reference:
        return update_reference(params, paths, fresh)
    if params.verify is None:
        raise UserError(f"{spec.params_file}: no `verify` section: no tolerance to judge by")
    return compare(params, paths, fresh)
