"""The check's report: gpu-check-summary-<where>.json (every step's result, figures, log tail
on failure) and a one-page gpu-check-summary-<where>.md (a line per step: pass or fail and
why), written into the output folder beside the benchmark's own files.
"""

from __future__ import annotations

import time
from pathlib import Path

from gpucheck.harness import PASSED

SCHEMA = "pixbench.gpucheck/1"  # the summary format: its name, not a module
STATUS_TEXT = {
    "pass": "ran and every check held",
    "skip": "does not apply on this machine (not a failure)",
    "fail": "ran and a check failed, or it raised",
    "timeout": "still running at its limit: killed",
    "crash": "its process died without a result (signal or exit code)",
    "blocked": "not run: a step it needs did not pass",
    "not-run": "not run: the check's time budget was spent",
}
TOLERANCES = ("bf16 vs fp32 (one AdamW step, same weights and batch): loss rel <= 0.02, "
              "gradient cosine >= 0.99, fp32 loss after the step rel <= 0.02",
              "flash vs fp32 math attention (bf16 inputs): |out diff| <= 0.02, input "
              "gradients rel <= 0.02",
              "DDP vs one process (fp32 MLP): gradients within 1e-5",
              "benchmark: no case errors, none left unreached; on CUDA MFU in (0, 1.05], a CUDA "
              "memory figure > 0 for every train case, a fast matmul peak")


def where_name(results: list[dict], cpu: bool) -> str:
    from benchsuite.env import sanitize

    env = next((r for r in results if r["name"] == "env"), {}).get("figures", {})
    torch_v = str(env.get("torch", "unknown")).split("+")[0]
    where = "cpu" if cpu else f"cuda-{sanitize(env.get('device', 'unknown'))}"
    return f"{where}-torch{torch_v}"


def build(results: list[dict], meta: dict) -> dict:
    failed = [r["name"] for r in results if r["status"] not in PASSED]
    return {"schema": SCHEMA, **meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "passed": [r["name"] for r in results if r["status"] == "pass"],
            "skipped": [r["name"] for r in results if r["status"] == "skip"],
            "failed": failed, "ok": not failed, "exit_code": 1 if failed else 0,
            "tolerances": list(TOLERANCES), "steps": results}


def _cell(text: str, width: int = 220) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[:width - 1] + "…"


def markdown(doc: dict) -> str:
    env = next((r for r in doc["steps"] if r["name"] == "env"), {}).get("figures", {})
    blocked = [r["name"] for r in doc["steps"] if r["status"] == "blocked"]
    verdict = "**PASS**: every step passed" if doc["ok"] else \
        "**FAIL**: " + ", ".join(n for n in doc["failed"] if n not in blocked) + \
        (f"; {len(blocked)} step(s) blocked by that" if blocked else "")
    lines = [f"# GPU validation kit: {doc['where']}", "",
             f"{verdict} ({len(doc['passed'])} passed, {len(doc['skipped'])} skipped, "
             f"{len(doc['failed'])} failed) in {doc['duration_s']:.0f} s of a "
             f"{doc['budget_s']:.0f} s budget; form `{doc['form']}` (sizes `{doc.get('sizes')}`), "
             f"{doc['jobs']} step(s) at a time, exit code "
             f"{doc['exit_code']}.", "",
             f"- device: {env.get('device', '?')}, torch {env.get('torch', '?')}, timm "
             f"{env.get('timm', '?')}, python {env.get('python', '?')}"
             + (f", NCCL {env['nccl']}" if "nccl" in env else ""),
             f"- command: `{doc['command']}`", "",
             "| step | what it proves | status | s | detail |", "|---|---|---|---|---|"]
    for r in doc["steps"]:
        lines.append(f"| {r['name']} | {_cell(r['proves'], 90)} | **{r['status']}** | "
                     f"{r.get('seconds', 0):.1f} | {_cell(r.get('detail', ''))} |")
    lines += ["", "Statuses: " + "; ".join(f"`{k}` {v}" for k, v in STATUS_TEXT.items()) + ".",
              "", "Tolerances: " + "; ".join(TOLERANCES) + "."]
    if doc.get("imports_missing_on_target"):
        lines += ["", "Imported here but neither on the target image nor carried as wheels: "
                  + ", ".join(doc["imports_missing_on_target"]) + "."]
    if doc.get("carry_version_drift"):
        lines += ["", "Carried packages installed here at other versions than the wheel list "
                  "pins (the import check above is then approximate): "
                  + ", ".join(doc["carry_version_drift"]) + "."]
    fails = [r for r in doc["steps"] if r.get("log_tail")]
    for r in fails:
        lines += ["", f"## {r['name']}: last lines of {r['log']}", "", "```",
                  r["log_tail"][-3000:], "```"]
    return "\n".join(lines) + "\n"


def write(doc: dict, out_dir: Path) -> tuple[Path, Path]:
    from pixbench.runio import atomic_write_bytes, atomic_write_json

    stem = f"gpu-check-summary-{doc['where']}"  # no with_suffix: "torch2.11.0" has dots
    md, js = Path(out_dir) / f"{stem}.md", Path(out_dir) / f"{stem}.json"
    atomic_write_bytes(md, markdown(doc).encode())
    atomic_write_json(js, {**doc, "files": {"md": md.name}})
    return js, md
