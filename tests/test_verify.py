"""`pixbench verify` on synthetic run dirs: bitwise on the same machine kind, seed noise passes
and a planted departure fails across machine kinds, and the refusals."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
from conftest import write_params
from hostile import run_cli

from pixbench.config import Paths, load_params
from pixbench.config.pipeline import sweep_runs
from pixbench.errors import UserError
from pixbench.verify import collect, compare, metrics_path, reference_path, result_path
from pixbench.tasks.table import RESULTS, TASKS
from pixbench.verify.compare import tolerance
from pixbench.verify.machine import cpu_flags, describe, machine_kind, same_kind

VERIFY = {"k": 4.0, "rel_floor": 0.01, "single_seed_rel": 0.15, "alpha": 0.05, "sanity": {}}
HERE = {"cpu": "Test CPU", "isa_flags": ["avx2", "avx512f"], "capability": "AVX512",
        "torch": "2.x"}
KERNELS = {"aten_capability": "AVX512", "ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": None,
           "MKL_CBWR": None}
MANIFEST = {"cpu": "Test CPU", "cpu_vendor": "TestVendor", "kernels": KERNELS, "device": "cpu",
            "torch_threads": 2, "git_sha": "abc", "git_dirty": False, "versions": {"torch": "2.x"}}


@pytest.fixture
def project(workdir, tiny_params):
    """Three classification seeds, one MAE patch size, no locality: a small sweep."""
    p = copy.deepcopy(tiny_params)
    p["sweep"] = {"sizes": ["xxs"], "patches": [1, 4], "seeds": [0, 1, 2]}
    p["locality"]["run"] = []
    p["mae_sweep"].update(patches=[4], alt_target=None, alt_patches=[])
    p["verify"] = dict(VERIFY)
    return load_params(write_params(workdir / "params.yaml", p))


def write_runs(params, value) -> None:
    """A finished run dir per sweep run; value(run, metric) gives each result number."""
    paths = Paths()
    for run in sweep_runs(params):
        d = paths.run_dir(params.profile, run.run_id)
        d.mkdir(parents=True, exist_ok=True)
        m = {"run_id": run.run_id, "task": run.task, "spec_digest": run.spec.digest(),
             **{k: value(run, k) for k in RESULTS[run.task]}}
        (d / "metrics.json").write_text(json.dumps(m))
        (d / "manifest.json").write_text(json.dumps(MANIFEST))


def n_cells(params) -> int:
    return len({(r.group, k) for r in sweep_runs(params) for k in RESULTS[r.task]})


def base(run, metric) -> float:
    """The 'reference machine' numbers: seed spread of about 1 point."""
    patch = getattr(run.spec, "patch", 1)
    return 60.0 + 5 * patch + (-1.0, 0.3, 0.9)[run.seed] + (0.17 if metric != "top1" else 0.0)


def run_verify(params, here=HERE) -> dict:
    return compare(params, Paths(), collect(params, Paths(), here, TASKS), TASKS)


def write_reference(params, here=HERE, **machine) -> None:
    ref = collect(params, Paths(), here, TASKS)
    ref["machine"].update(machine)
    path = reference_path(Paths(), params.profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ref))


def test_same_machine_is_bitwise_and_one_ulp_departs(project, capsys):
    write_runs(project, base)
    write_reference(project)
    res = run_verify(project)
    out = capsys.readouterr().out
    n = n_cells(project)
    assert res["reproduced"] == res["cells"] == n and f"reproduced {n} of {n} cells" in out
    assert "bitwise equal" in out
    # the smallest float change is a departure when bitwise equality is expected
    write_runs(project, lambda r, k: math.nextafter(base(r, k), 99) if r.seed == 2 else base(r, k))
    with pytest.raises(UserError, match=rf"reproduced {n - 2} of {n} cells.*: classify xxs p1 "
                       "top1, classify xxs p4 top1 "):
        run_verify(project)
    out = capsys.readouterr().out
    assert "DEPARTS classify xxs p1 top1" in out and "not bitwise equal" in out
    saved = json.loads(result_path(Paths(), project.profile).read_text())
    assert saved["bitwise"] and saved["departures"] == 2
    assert json.loads(metrics_path(Paths(), project.profile).read_text())["departures"] == 2


def test_other_machine_passes_seed_noise_and_fails_a_planted_departure(project, capsys):
    write_runs(project, base)
    write_reference(project, cpu="AVX2 CPU", isa_flags=["avx2"])  # made elsewhere
    rng = random.Random(0)
    noise = {r.run_id: rng.gauss(0, 0.8) for r in sweep_runs(project)}
    write_runs(project, lambda r, k: base(r, k) + noise[r.run_id])
    res = run_verify(project)
    out = capsys.readouterr().out
    assert res["departures"] == 0 and res["reproduced"] == res["cells"] == n_cells(project)
    assert "statistical" in out and "bitwise" not in out.split("another machine kind")[1]
    # p=1 collapses in every seed (a stall): 10 points lower, far outside the seed spread
    write_runs(project, lambda r, k: base(r, k) - (10.0 if r.spec.patch == 1 else 0.0))
    with pytest.raises(UserError, match="departed: classify xxs p1 top1"):
        run_verify(project)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("DEPARTS"))
    assert "reference 65.0667" in line and "fresh 55.0667" in line and "tolerance" in line


def test_cli_exit_code_and_update_reference(project, monkeypatch, capsys):
    write_runs(project, base)
    code, out, _ = run_cli(["verify", "--update-reference"], monkeypatch, capsys)
    ref = json.loads(reference_path(Paths(), project.profile).read_text())
    assert code == 0 and ref["seeds"]["sweep"] == [0, 1, 2] and ref["machine"]["device"] == "cpu"
    assert [r["values"]["top1"] for r in ref["groups"]["classify xxs p4"]["runs"]] == [79.0, 80.3, 80.9]
    code, out, _ = run_cli(["verify"], monkeypatch, capsys)
    assert code == 0 and f"reproduced {n_cells(project)} of {n_cells(project)} cells" in out
    write_runs(project, lambda r, k: base(r, k) + 30.0)
    code, out, err = run_cli(["verify"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: verify: ")
    assert f"reproduced 0 of {n_cells(project)} cells" in err


def test_cells_come_from_the_sweep_not_the_disk(project, tiny_params, workdir, capsys):
    write_runs(project, base)
    write_reference(project)
    p = copy.deepcopy(tiny_params)  # the same sweep with one seed: the extra runs stay on disk
    p.update(sweep={"sizes": ["xxs"], "patches": [1, 4], "seeds": [0]}, verify=dict(VERIFY))
    p["locality"]["run"] = []
    p["mae_sweep"].update(patches=[4], alt_target=None, alt_patches=[])
    one_seed = load_params(write_params(workdir / "params.yaml", p))
    fresh = collect(one_seed, Paths(), HERE, TASKS)
    assert [len(g["runs"]) for g in fresh["groups"].values()] == [1] * n_cells(one_seed)
    res = run_verify(one_seed)  # seed 0 is bitwise the reference's seed 0
    assert res["reproduced"] == res["cells"] == n_cells(one_seed)
    assert "classify xxs p1 top1: 64 (n=1), bitwise equal" in capsys.readouterr().out


def test_refusals_and_a_profile_without_reference(project, capsys):
    write_runs(project, base)
    res = run_verify(project)  # no reference yet: nothing to judge, not a failure
    assert res["cells"] == 0 and "no reference for profile tiny" in capsys.readouterr().out
    run0 = sweep_runs(project)[0]
    (Paths().run_dir(project.profile, run0.run_id) / "metrics.json").unlink()
    with pytest.raises(UserError, match="1 run\\(s\\) of the current sweep have no results"):
        collect(project, Paths(), HERE, TASKS)
    write_runs(project, base)
    d = Paths().run_dir(project.profile, run0.run_id)
    (d / "metrics.json").write_text(json.dumps({"spec_digest": "0" * 16, "top1": 1.0}))
    with pytest.raises(UserError, match="made with other settings"):
        collect(project, Paths(), HERE, TASKS)
    write_runs(project, base)
    ref = reference_path(Paths(), project.profile)
    ref.parent.mkdir(parents=True)
    groups = {g: {} for g in collect(project, Paths(), HERE, TASKS)["groups"]}
    ref.write_text(json.dumps({"format": 1, "machine": {}, "groups": groups}))
    with pytest.raises(UserError, match="tiny.json: malformed reference"):
        run_verify(project)
    ref.write_text("{not json")
    with pytest.raises(UserError, match="tiny.json: corrupt reference"):
        run_verify(project)


def test_tolerance_rule():
    cfg = load_cfg()
    assert tolerance([80.0], [70.0], cfg) == ("single-seed", pytest.approx(12.0))
    mode, tol = tolerance([60.0, 62.0], [61.0], cfg)  # one fresh seed borrows the ref's spread
    assert mode == "statistical" and tol == pytest.approx(4 * (2 ** 0.5) * (1 / 2 + 1) ** 0.5)
    assert tolerance([60.0, 60.0], [60.0, 60.0], cfg)[1] == pytest.approx(0.6)  # the floor


def test_seeds_on_one_tokenizer_count_as_one_replicate():
    """Two DiT seeds on one tokenizer agree to 0.05%; a changed tokenizer moves both by ~6%
    (measured, SHARED_UPSTREAM): seed noise by Welch's rule would call that a departure."""
    from pixbench.verify.compare import judge_group

    def group(task, losses):
        metric = RESULTS[task][0]
        return {"task": task, "shared": TASKS[task].shared_upstream,
                "runs": [{"run_id": f"r{i}", "seed": i, "spec_digest": "d",
                          "values": {metric: v}} for i, v in enumerate(losses)]}

    cfg = load_cfg()  # single_seed_rel 0.15
    ref, moved, broken = [0.0816, 0.08164], [0.0870, 0.08704], [0.110, 0.1101]
    (cell,) = judge_group("dit xxs p1", group("dit", ref), group("dit", moved), False, cfg)
    assert cell.ok and cell.mode == "one tokenizer" and cell.tolerance == pytest.approx(
        0.15 * 0.08162)
    (cell,) = judge_group("dit xxs p1", group("dit", ref), group("dit", broken), False, cfg)
    assert not cell.ok  # +35%: a departure all the same
    # independent replicates (classification) keep the seed-spread rule: the same shift departs
    (cell,) = judge_group("c", group("classify", ref), group("classify", moved), False, cfg)
    assert cell.mode == "statistical" and not cell.ok


def load_cfg():
    from pixbench.config.params import VerifyConfig

    return VerifyConfig(**VERIFY)


def test_machine_kind():
    model, flags = cpu_flags("model name\t: X CPU\nflags\t\t: fpu sse avx2 fma avx512f amx_tile\n")
    assert model == "X CPU" and flags == ["fma", "avx2", "avx512f", "amx_tile"]
    kind = machine_kind([MANIFEST, MANIFEST], HERE)
    assert kind["isa_flags"] == HERE["isa_flags"] and same_kind(kind, dict(kind))
    other = machine_kind([MANIFEST, {**MANIFEST, "torch_threads": 1}], HERE)
    assert other["threads"] == "mixed" and not same_kind(other, other)
    # the same CPU with another kernel path (an emulated machine kind) is another kind
    for env in ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"MKL_CBWR": "COMPATIBLE"}):
        emulated = machine_kind([{**MANIFEST, "kernels": {**KERNELS, **env}}], HERE)
        assert same_kind(emulated, dict(emulated)) and not same_kind(kind, emulated)
        assert f"{next(iter(env))}={next(iter(env.values()))}" in describe(emulated)
    elsewhere = machine_kind([MANIFEST], {**HERE, "cpu": "Another CPU"})
    assert elsewhere["isa_flags"] is None and not same_kind(elsewhere, elsewhere)
