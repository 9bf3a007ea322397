"""The machine-kinds rehearsal (bench/machine_kinds.py): its spread and table from synthetic
settings (fast), and end to end on the tiny every-track study repo under two settings (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _res(shift: float) -> dict:
    runs = [{"values": {"top1": v + shift}} for v in (60.0, 61.0, 62.0)]
    return {"groups": {"classify xxs p1": {"task": "classify", "runs": runs}}}


def test_cross_kind_spread_pools_every_setting(tmp_path):
    from machine_kinds import cross_kind
    from machine_kinds_report import write_report

    res = {"native": _res(0.0), "aten-avx2": _res(3.0)}
    cross = cross_kind(res)
    (stat,) = cross["classify xxs p1"].values()
    vals = [60.0, 61.0, 62.0, 63.0, 64.0, 65.0]
    assert stat["n"] == 6 and stat["settings"] == ["aten-avx2", "native"]
    assert stat["sd"] == pytest.approx(__import__("statistics").stdev(vals))
    conc = [{"key": "classify xxs p1 vs classify xxs p2 top1", "a": "classify xxs p1",
             "b": "classify xxs p2", "verdict": "b", "p_holm": 0.001}]
    runs = [{"setting": n, "env": {"X": "1"} if n != "native" else {}, "exit": 0, "wall_s": 60.0,
             "verify_final": {"exit": 0, "conclusions": 1, "conclusions_held": 1, "cells": 1,
                              "reproduced": 1},
             "conclusions": conc, "headline": {"classify xxs p1": {"top1": [60.0, 61.0]}},
             "machine": {"cpu": "CPU", "vendor": "V", "torch": "2", "threads": 1}}
            for n in res]
    write_report(tmp_path, runs, cross)
    md = (tmp_path / "machine-kinds.md").read_text()
    assert "| native | `–` | 1.0 min | pass | 1 of 1 | 1 of 1 |" in md
    assert "| p1 vs p2 top1 | p2 better (p_Holm 0.001) | p2 better (p_Holm 0.001) |" in md
    assert json.loads((tmp_path / "machine-kinds.json").read_text())["cross_kind"] == cross


@pytest.mark.slow
def test_rehearsal_end_to_end_on_the_tiny_study(tmp_path):
    """Two settings of the tiny study repo (a git checkout): both pass against the reference
    made by the first, and the table names both."""
    repo = tmp_path / "repo"
    make = ("import sys; sys.path.insert(0, 'tests'); from pathlib import Path; "
            "from studyrepo import make_study_repo, study_params; "
            f"make_study_repo(Path({str(repo)!r}), study_params(seeds=(0, 1)))")
    # in its own process: tests/conftest (which studyrepo imports) is not bench/conftest
    subprocess.run([sys.executable, "-c", make], cwd=HERE.parent, check=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=repo, check=True)
    subprocess.run([sys.executable, str(HERE / "machine_kinds.py"), "--repo", str(repo),
                    "--settings", "native,onednn-avx2", "--update-reference",
                    "--work", str(tmp_path / "work")], check=True, timeout=1800)
    table = json.loads((repo / "reports" / "bench" / "machine-kinds.json").read_text())
    assert [s["setting"] for s in table["settings"]] == ["native", "onednn-avx2"]
    assert all(s["verify_final"]["exit"] == 0 for s in table["settings"])
    ref = json.loads((repo / "reports" / "reference" / "tiny.json").read_text())
    assert ref["cross_kind"] and ref["groups"]
