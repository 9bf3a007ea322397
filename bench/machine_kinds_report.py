"""reports/bench/machine-kinds.{json,md}: the machine-kinds rehearsal's table (machine_kinds.py)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

VERDICT = {"a": "{a} better", "b": "{b} better", "tie": "tie", "untested": "untested",
           "invalid": "invalid"}


def _ms(vals: list[float]) -> str:
    m = statistics.fmean(vals)
    return f"{m:.4g}" + (f" ± {statistics.stdev(vals):.2g}" if len(vals) > 1 else "")


def _short(group: str) -> str:
    return group.replace("classify ", "").replace("xxs ", "")


def _verdict(c: dict) -> str:
    v = VERDICT[c["verdict"]].format(a=_short(c["a"]), b=_short(c["b"]))
    return v + (f" (p_Holm {c['p_holm']:.2g})" if c.get("p_holm") is not None else "")


def write_report(out_dir: Path, runs: list[dict], cross: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic(out_dir / "machine-kinds.json",
            json.dumps({"settings": runs, "cross_kind": cross}, indent=2, sort_keys=True) + "\n")
    names = [r["setting"] for r in runs]
    lines = ["# Machine kinds emulated on one machine", "",
             "`python bench/machine_kinds.py --update-reference` (bench/machine_kinds.py): a "
             "clone of HEAD run end to end (`pixbench study run`: every cell, the report, "
             "verify) once per setting, each setting an environment variable that forces other "
             "CPU kernels. Machine: " + _machine(runs[0]) + ".", "",
             "## Verdicts", "",
             "| setting | env | wall | verify vs the reference | conclusions held | cells |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        f = r["verify_final"]
        env = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "–"
        lines.append(f"| {r['setting']} | `{env}` | {r['wall_s'] / 60:.1f} min | "
                     f"{'pass' if f['exit'] == 0 else 'FAIL'} | {f['conclusions_held']} of "
                     f"{f['conclusions']} | {f['reproduced']} of {f['cells']} |")
    lines += ["", "The reference is the first setting's results; its cross-kind spread (below) is "
              "every setting's values pooled. The committed reference before this rehearsal "
              "judged each setting's study run as: " + "; ".join(
                  f"{r['setting']} exit {r['exit']}" for r in runs) + ".", "",
              "## Conclusions per setting", "",
              "| conclusion | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    keys = [c["key"] for c in runs[0]["conclusions"]]
    by = {r["setting"]: {c["key"]: c for c in r["conclusions"]} for r in runs}
    for k in keys:
        cells = [_verdict(by[n][k]) if k in by[n] else "–" for n in names]
        lines.append(f"| {_short(k)} | " + " | ".join(cells) + " |")
    lines += ["", "## Headline numbers per setting (mean ± std over seeds)", "",
              "| cell | metric | " + " | ".join(names) + " | cross-kind sd |",
              "|---|---|" + "---|" * (len(names) + 1)]
    for group, metrics in runs[0]["headline"].items():
        for m in metrics:
            vals = [_ms(r["headline"][group][m]) if group in r["headline"] else "–"
                    for r in runs]
            sd = cross.get(group, {}).get(m, {}).get("sd")
            tail = f" | {sd:.3g} |" if sd is not None else " | – |"
            lines.append(f"| {group} | {m} | " + " | ".join(vals) + tail)
    _atomic(out_dir / "machine-kinds.md", "\n".join(lines) + "\n")


def _machine(run: dict) -> str:
    m = run["machine"]
    return f"{m.get('cpu')} ({m.get('vendor')}), torch {m.get('torch')}, {m.get('threads')} thread"


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
