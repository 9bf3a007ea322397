"""The report's compute section, read from the committed benchmark results (reports/bench/)."""

from __future__ import annotations

import json
from pathlib import Path


def _is_suite_result(path: Path) -> bool:
    """A benchmark suite result (`make bench`: env_name + targets); the scale rehearsals and the
    pipeline-speed notes write other JSON beside them, linked from the report instead."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "env_name" in doc and "targets" in doc


def _bench_files(bench_dir: Path) -> list[Path]:
    """Full-profile results only: quick smoke runs and partial runs are not evidence."""
    return sorted(p for p in bench_dir.glob("*.json")
                  if not p.name.startswith("quick-") and "-partial" not in p.name
                  and _is_suite_result(p))


def rehearsal_links(bench_dir: Path, reports_dir: Path) -> list[str]:
    """Links to the scale rehearsals and other measured notes (their own Markdown files)."""
    suite = {p.with_suffix(".md").name for p in _bench_files(bench_dir)}
    notes = sorted(p for p in bench_dir.glob("*.md") if p.name not in suite | {"README.md"})
    if not notes:
        return []
    rel = bench_dir.relative_to(reports_dir) if bench_dir.is_relative_to(reports_dir) else bench_dir
    return ["### Scale rehearsals and measured notes", "",
            *[f"- [{p.stem}]({rel}/{p.name})" for p in notes], ""]


def _cost_rows(doc: dict) -> list[str]:
    cost = doc.get("cost_estimate") or {}
    rows = cost.get("rows") or []
    if not rows:
        return []
    unit = cost.get("unit", "hours")
    lines = [f"Estimated {unit} to reproduce the paper's recipes ({cost.get('note', '')}):", "",
             "| table | model | tokens | epochs | images | train GFLOPs/img | img/s | hours | from |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['table']} | ViT-{r['size'].upper()}/{r['patch']} | {r['tokens']} | "
                     f"{r['epochs']} | {r['images']:,} | {r['train_flops_per_image'] / 1e9:,.1f} | "
                     f"{r['items_per_s']:.4g} | {r['hours']:,.0f} | {r['method']}: "
                     f"{r['source']} |")
    return lines + [""]


def bench_section(bench_dir: Path, reports_dir: Path) -> list[str]:
    files = _bench_files(bench_dir)
    if not files:
        links = rehearsal_links(bench_dir, reports_dir)
        return ["## Compute benchmarks", "", *links] if links else []
    lines = ["## Compute benchmarks", "",
             "From `make bench` (bench/benchsuite, also run by pytest-benchmark in `bench/`); "
             "MFU is achieved FLOP/s "
             "(analytic, attention counted) over a matmul peak measured in the same run on the "
             "same device and dtype.", ""]
    for path in files:
        doc = json.loads(path.read_text())
        env = doc.get("environment", {})
        lines += [f"### {doc['env_name']}", "",
                  f"- {env.get('cpu') or env.get('gpu') or doc.get('device')}; profile "
                  f"`{doc['profile']}`, {doc.get('duration_s', 0):.0f} s.", "",
                  "| figure | target | measured | status | what limits it |", "|---|---|---|---|---|"]
        for t in doc["targets"]:
            lines.append(f"| {t['figure']} | {t['target']} | {t['measured']} | **{t['status']}** "
                         f"| {t['limits'] or ''} |")
        lines.append("")
        rel = path.parent.relative_to(reports_dir) if path.parent.is_relative_to(reports_dir) else path.parent
        lines += [f"![{p}]({rel}/{p})" for p in doc.get("files", {}).get("plots", [])] + [""]
        lines += _cost_rows(doc)
    return lines + rehearsal_links(bench_dir, reports_dir)
