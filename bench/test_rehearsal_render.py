"""scale-prepare.md re-rendered from the committed JSONs (benchsuite.rehearsal_report.render):
seconds, no rehearsal. The render adds DVC's cost of recording the cache (dvc-record.json) to
the ImageNet-1k extrapolation and leaves every figure the JSON holds as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchsuite import rehearsal_report

BENCH = Path(__file__).resolve().parents[1] / "reports" / "bench"


def _render(folder: Path, with_dvc: bool) -> str:
    folder.mkdir()
    shutil.copy(BENCH / "scale-prepare.json", folder)
    if with_dvc:
        shutil.copy(BENCH / "dvc-record.json", folder)
    return rehearsal_report.render(folder).read_text()


def _row(md: str, key: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {key} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_the_committed_report_is_a_render_of_its_json(tmp_path):
    assert _render(tmp_path / "r", True) == (BENCH / "scale-prepare.md").read_text()


def test_render_adds_dvc_cost_and_keeps_the_extrapolation(tmp_path):
    doc = json.loads((BENCH / "scale-prepare.json").read_text())
    rec = json.loads((BENCH / "dvc-record.json").read_text())
    plain, dvc = _render(tmp_path / "plain", False), _render(tmp_path / "dvc", True)
    assert "DVC record: not shown" in plain
    for key, e in doc["derived"]["extrapolation"].items():
        old, new = _row(plain, key), _row(dvc, key)
        assert len(old) == 8 and new[:8] == old  # the existing columns, unchanged
        assert old[3:6] == [str(e["disk_gib"]), str(e["cpu_core_hours"]),
                            str(e["wall_h_one_32_core_node"])]
        per_gib = rec["cached_out_s"] / rec["cached_out_copied_bytes"] * 2**30
        assert float(new[8]) == pytest.approx(rec["identity_s"], abs=0.005)
        assert float(new[9]) == pytest.approx(per_gib * e["disk_gib"] / 3600, abs=0.0005)
        assert new[10] == str(e["disk_gib"])
    # ImageNet-1k's 256px cache: minutes of md5 + copy before, against a constant now
    assert float(_row(dvc, "256px")[9]) * 3600 > 100 * rec["identity_s"]
