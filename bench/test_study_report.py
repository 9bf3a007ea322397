"""bench/study_measure.py's report, without the minutes of DVC work: study.md is a render of
the committed study/study.json, and a rehearsal figure the estimate needs but its JSON lacks
stops the script naming the file, the field and the bench that writes it (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import study_measure
import study_report

BENCH = Path(__file__).resolve().parents[1] / "reports" / "bench"


def test_the_committed_study_md_is_a_render_of_study_json():
    out = json.loads((BENCH / "study" / "study.json").read_text())
    assert study_report.markdown(out) == (BENCH / "study.md").read_text()


def test_a_missing_measurement_names_its_file_field_and_bench():
    m = study_measure.load_measured()
    assert study_measure.need(m, "dvc", "identity_s") == m["dvc"]["identity_s"]
    row = study_measure.need(m, "prepare", "derived", "per_core", {"code": "branch", "size": 28})
    assert row["code"] == "branch" and row["size"] == 28
    del m["prepare"]["derived"]["extrapolation"]["256px"]["wall_h_one_32_core_node"]
    with pytest.raises(SystemExit, match=r"scale-prepare\.json: no derived\.extrapolation\."
                                         r"256px\.wall_h_one_32_core_node .*test_scale_prepare"):
        study_measure.need(m, "prepare", "derived", "extrapolation", "256px",
                           "wall_h_one_32_core_node")


def test_figures_come_from_the_rehearsals():
    """The memory rows and the record cost read the JSONs: a change there shows here."""
    m = study_measure.load_measured()
    rows = {r["key"]: r for r in study_measure.memory_rows(m, 32)}
    assert rows["prepare-256"]["now"] == next(
        n for n in m["prepare"]["derived"]["per_core"]
        if n["code"] == "branch" and n["size"] == 256)["node_peak_gib"]["32"]
    assert rows["dit-train-node"]["now"] < rows["dit-train-node"]["before"]
    with pytest.raises(SystemExit, match="node_peak_gib.48"):
        study_measure.memory_rows(m, 48)  # a node shape the rehearsal did not extrapolate
