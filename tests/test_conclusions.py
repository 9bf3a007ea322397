"""Conclusions (verify/conclusions.py): a ranking is tested, gated and verified before numbers.

The planted case of issue 23: a reversed ranking whose every cell stays inside its tolerance
band (bands widened by a measured cross-kind spread, as DiT's ±25 % did) passed the per-cell
check; the conclusion check fails it."""

from __future__ import annotations

import json
import subprocess

import pytest
from test_verify import HERE, base, project, run_verify, write_reference, write_runs  # noqa: F401

from pixbench.config import Paths
from pixbench.errors import UserError
from pixbench.tasks.table import TASKS
from pixbench.verify import reference_path
from pixbench.verify.compare import judge
from pixbench.verify.conclusions import check, conclude, group_gate, run_gate


def group(task: str, values: list[float], metric: str = "top1", gate: dict | None = None) -> dict:
    """A group as verify.collect writes it (the table's shared upstream model included)."""
    return {"task": task, "shared": TASKS[task].shared_upstream, "runs": [{"run_id": f"r{i}", "seed": i, "spec_digest": "d",
                                    "values": {metric: v}, "gate": dict(gate or {})}
                                   for i, v in enumerate(values)]}


def test_ranking_is_tested_and_a_gap_inside_seed_noise_is_a_tie():
    groups = {"classify xxs p1": group("classify", [59.9, 60.2, 60.4]),
              "classify xxs p2": group("classify", [75.0, 75.3, 75.1]),
              "classify xxs p4": group("classify", [75.2, 74.6, 75.9])}
    by = {c.key: c for c in conclude(groups, 0.05, TASKS)}
    assert set(by) == {"classify xxs p1 vs classify xxs p2 top1",
                       "classify xxs p1 vs classify xxs p4 top1",
                       "classify xxs p2 vs classify xxs p4 top1"}
    won = by["classify xxs p1 vs classify xxs p2 top1"]
    assert won.verdict == "b" and won.p_holm >= won.p and "p2 better than" in won.statement()
    assert by["classify xxs p2 vs classify xxs p4 top1"].verdict == "tie"
    # FID: lower is better
    gen = {"dit-eval xxs p1": group("dit-eval", [86.0, 87.0, 86.4], "fid_featnet"),
           "dit-eval xxs p2": group("dit-eval", [75.5, 75.7, 75.2], "fid_featnet")}
    (c,) = conclude(gen, 0.05, TASKS)
    assert c.verdict == "b" and c.diff > 0


def test_one_seed_is_untested_and_a_stalled_or_chance_group_is_invalid():
    groups = {"classify xxs p1": group("classify", [60.0]),
              "classify xxs p2": group("classify", [75.0, 75.3])}
    assert conclude(groups, 0.05, TASKS)[0].verdict == "untested"
    stuck = group("classify", [30.0, 31.0, 62.0])
    for r, esc in zip(stuck["runs"], (False, False, True)):
        r["gate"]["escaped"] = esc
    assert "2 of 3 seeds never left" in group_gate(stuck)
    (c,) = conclude({"classify xxs p1": stuck,
                     "classify xxs p2": group("classify", [75.0, 75.3])}, 0.05, TASKS)
    assert c.verdict == "invalid" and "plateau" in c.statement()
    assert run_gate({"num_classes": 5, "val_n": 1000, "top1": 21.0}, None) == {
        "chance": 20.0, "above_chance": False, "far_above_chance": False}  # inside 3 SEs
    assert run_gate({"num_classes": 10, "val_n": 10000, "top1": 60.0}, None)["above_chance"]


def test_a_reversed_ranking_inside_every_band_passes_cells_and_fails_conclusions():
    cfg = type("C", (), {"k": 4.0, "rel_floor": 0.01, "single_seed_rel": 0.25})
    ref = {"groups": {"dit-eval xxs p1": group("dit-eval", [86.0, 87.0, 86.4], "fid_featnet"),
                      "dit-eval xxs p2": group("dit-eval", [75.5, 75.7, 75.2], "fid_featnet")},
           "instruments": None}
    fresh = {"groups": {"dit-eval xxs p1": group("dit-eval", [76.0, 76.3, 75.9], "fid_featnet"),
                        "dit-eval xxs p2": group("dit-eval", [86.1, 86.6, 86.2], "fid_featnet")},
             "instruments": None}
    cells = judge(ref, fresh, cfg, bitwise=False)
    assert all(c.ok for c in cells)  # ±25 % bands: every cell "reproduced" (the old verdict)
    res = check([c.as_dict() for c in conclude(ref["groups"], 0.05, TASKS)],
                conclude(fresh["groups"], 0.05, TASKS))
    assert len(res) == 1 and not res[0]["held"] and res[0]["why"].startswith("reversed")


def test_verify_fails_a_reversed_conclusion_end_to_end(project, capsys):
    write_runs(project, base)  # p4 better than p1 by 20 points, spread ~1
    write_reference(project, cpu="AVX2 CPU", isa_flags=["avx2"])
    path = reference_path(Paths(), project.profile)
    ref = json.loads(path.read_text())
    ref["cross_kind"] = {"classify xxs p1": {"top1": {"sd": 12.0}},
                         "classify xxs p4": {"top1": {"sd": 12.0}}}
    path.write_text(json.dumps(ref))
    # swap the two patch sizes: each moves by 20 points, inside its cross-kind band (39 pt)
    write_runs(project, lambda r, k: base(r, k) + (20.0 if r.spec.patch == 1 and r.task ==
                                                     "classify" else -20.0 if r.task ==
                                                     "classify" else 0.0))
    with pytest.raises(UserError, match="classify xxs p1 vs classify xxs p4 top1 \\(reversed"):
        run_verify(project)
    out = capsys.readouterr().out
    assert "BROKEN  classify xxs p4 better than classify xxs p1" in out
    assert "DEPARTS classify xxs p1" not in out  # the per-cell check alone would have passed


def test_verify_refuses_missing_evidence(project, capsys, workdir):
    write_runs(project, base)
    write_reference(project)
    path = reference_path(Paths(), project.profile)
    ref = json.loads(path.read_text())
    del ref["groups"]["classify xxs p4"]
    path.write_text(json.dumps(ref))
    with pytest.raises(UserError, match="no reference for classify xxs p4"):
        run_verify(project)
    # a committed reference that disappeared is not "a profile without a reference"
    write_reference(project)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    subprocess.run([*git, "add", str(path.relative_to(workdir))], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-qm", "ref"], cwd=workdir, check=True)
    path.unlink()
    with pytest.raises(UserError, match="the committed reference is missing"):
        run_verify(project)


def test_a_profile_that_never_had_a_reference_says_so(project, capsys):
    write_runs(project, base)
    res = run_verify(project)
    assert res["reference"] is None and "no reference for profile" in capsys.readouterr().out


def test_machine_kind_here_is_unchanged_by_conclusions(project):
    """The reference written by collect carries each run's gate facts."""
    write_runs(project, base)
    write_reference(project, **HERE)
    ref = json.loads(reference_path(Paths(), project.profile).read_text())
    assert all("gate" in r for g in ref["groups"].values() for r in g["runs"])


def test_report_gives_a_stalled_pixel_model_a_warning_not_a_p_value():
    from pixbench.report import aggregate, pixel_vs_best

    def row(patch, seed, top1, losses):
        curve = [{"step": 100 * (i + 1), "epoch": (i + 1) / len(losses), "train_loss": v}
                 for i, v in enumerate(losses)]
        return {"dataset": "d", "image_size": 12, "size": "xxs", "patch": patch, "seed": seed,
                "top1": top1, "num_classes": 10, "val_n": 10000, "_curve": curve}

    flat, falling = [2.0] * 8, [2.0, 1.9, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7]
    stuck = [row(1, s, 25.0 + s, flat) for s in range(3)]
    good = [row(4, s, 80.0 + s / 10, falling) for s in range(3)]
    (line,) = pixel_vs_best(aggregate(stuck + good))
    assert "no test" in line and "never left their loss plateau" in line and "t =" not in line
    escaped = [row(1, s, 60.0 + s, falling) for s in range(3)]
    (line,) = pixel_vs_best(aggregate(escaped + good))
    assert "Welch's t-test" in line and "t = " in line


def test_a_retrained_instrument_is_judged_by_its_sanity_band():
    from pixbench.verify.compare import judge_group

    def ev(rfid: float) -> dict:
        return {"task": "vq-eval", "runs": [{"run_id": "vq-s0-eval", "seed": 0,
                                             "spec_digest": "d",
                                             "values": {"psnr": 20.0, "rfid_featnet": rfid}}]}

    cfg = type("C", (), {"k": 4.0, "rel_floor": 0.01, "single_seed_rel": 0.25})
    band = {"vq-eval.rfid_featnet": (3.4, 17.0)}
    _, ok = judge_group("vq-eval", ev(5.85), ev(13.56), False, cfg, sanity=band)
    assert ok.ok and ok.mode.startswith("sanity band")  # +132 %, inside the measured band
    _, bad = judge_group("vq-eval", ev(5.85), ev(40.0), False, cfg, sanity=band)
    assert not bad.ok
    # pinned instruments: the same bytes everywhere, judged by the usual rule
    _, pinned = judge_group("vq-eval", ev(5.85), ev(13.56), False, cfg, pinned=True,
                            sanity=band)
    assert pinned.mode == "single-seed" and not pinned.ok


def curve(losses: list[float], every: int = 100) -> list[dict]:
    """A classification curve whose windows have these mean losses (one epoch: the running
    mean of the epoch so far, as the task writes it)."""
    rows, total = [], 0.0
    for i, loss in enumerate(losses, start=1):
        total += loss * every
        rows.append({"step": every * i, "epoch": round(i / (len(losses) + 0.5), 4),
                     "train_loss": total / (every * i)})
    return rows


def test_a_short_curve_is_no_verdict_and_fails_the_gate_unless_far_above_chance():
    short = curve([2.05, 2.0, 1.98])  # 3 points: the old rule read "never"
    plateaued = run_gate({"num_classes": 10, "val_n": 1000, "top1": 24.85}, short)
    assert plateaued["plateau"] == "short" and plateaued["curve_points"] == 3
    assert "escaped" not in plateaued and plateaued["above_chance"]  # 24.85 % is above 10 %
    learned = run_gate({"num_classes": 10, "val_n": 1000, "top1": 61.0}, short)
    assert learned["far_above_chance"] and learned["plateau"] == "short"
    why = group_gate({"runs": [{"gate": plateaued}, {"gate": plateaued}]})
    assert "2 of 2 seeds' learning curves too short for a plateau verdict (3, 3 points" in why
    assert group_gate({"runs": [{"gate": learned}, {"gate": learned}]}) == ""
    # a single window is the run's mean loss, not a curve (MAE's one row per epoch): top-1 only
    assert "plateau" not in run_gate({"num_classes": 10, "val_n": 1000, "top1": 24.85},
                                     curve([2.0]))


def test_a_run_far_above_chance_is_never_reported_as_never_escaped():
    """The consistency check: the loss fell inside the early window and stayed (no escape by
    the rule, enough points), but top-1 is far above chance: it learned."""
    early = curve([2.3, 0.9, 0.88, 0.87, 0.86, 0.86, 0.85, 0.85])
    far = run_gate({"num_classes": 10, "val_n": 1000, "top1": 85.0}, early)
    assert far["plateau"] == "learned" and "escaped" not in far
    near = run_gate({"num_classes": 10, "val_n": 1000, "top1": 30.0}, early)
    assert near["plateau"] == "never" and near["escaped"] is False
    assert group_gate({"runs": [{"gate": far}] * 2}) == ""
    assert "2 of 2 seeds never left their loss plateau" in group_gate(
        {"runs": [{"gate": near}] * 2})
