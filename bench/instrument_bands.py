"""Sanity bands of the generation track's instruments when they are retrained (issue 23).

    python bench/instrument_bands.py [--settings native,aten-avx2,onednn-avx2,mkl-compatible]

With `pretrained: null` the tokenizer and FeatNet are trained on the machine that runs the
pipeline, and their own results (tokenizer final L1, PSNR and rFID, FeatNet top-1) differ
between machine kinds far more than seed noise: a retrained instrument is judged by a band,
not by a tolerance around one reference. Here each is retrained by the default profile's recipe
under each emulated kernel setting (bench/machine_kinds.py's SETTINGS), one process per setting
with one thread (as `make repro` runs cells), then scored (`vq eval`). The band of each number
is [min / (1 + MARGIN), max * (1 + MARGIN)] over the settings and the reference made on another
machine kind (git history, FROM_GIT: an Intel Xeon with AMX), so an unseen kind has room.

Writes reports/bench/instrument-bands.{json,md}; the bands go to params.yaml
`verify.sanity.<profile>` by hand (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine_kinds import SETTINGS, env_for  # noqa: E402

MARGIN = 0.25
FROM_GIT = "d639017"  # the reference before fixed instruments: Intel Xeon (AVX-512, AMX)
NUMBERS = {"vq": ("final_l1",), "vq-eval": ("psnr", "rfid_featnet"), "featnet": ("val_top1",)}
STEPS = (["vq", "train"], ["featnet", "train"], ["vq", "eval"])


def retrained_params(work: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    gen = raw["profiles"][raw["profile"]]["gen"]
    gen["vq"]["pretrained"] = None
    gen["featnet"]["pretrained"] = None
    path = work / "params-retrained.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_setting(name: str, params: Path, work: Path) -> dict:
    runs = work / name / "runs"
    env = {**env_for(SETTINGS[name], ROOT), "OMP_NUM_THREADS": "1",
           "PIXBENCH_RUNS_DIR": str(runs), "PIXBENCH_REPORTS_DIR": str(work / name / "reports"),
           "PIXBENCH_CACHE_DIR": str(ROOT / "data")}
    t0 = time.perf_counter()
    for step in STEPS:
        subprocess.run(["pixbench", *step, "--params", str(params)], cwd=ROOT, env=env,
                       check=True, capture_output=True)
    profile = yaml.safe_load(params.read_text())["profile"]
    out = {"setting": name, "env": SETTINGS[name], "wall_s": time.perf_counter() - t0}
    for task, keys in NUMBERS.items():
        run_id = {"vq": "vq-s0", "vq-eval": "vq-s0-eval", "featnet": "featnet-s0"}[task]
        m = json.loads((runs / profile / run_id / "metrics.json").read_text())
        out.update({f"{task}.{k}": m[k] for k in keys})
    return out


def from_git(profile: str) -> dict:
    text = subprocess.run(["git", "show", f"{FROM_GIT}:reports/reference/{profile}.json"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ref = json.loads(text)
    out = {"setting": f"reference at {FROM_GIT}", "env": {}, "machine": ref["machine"]["cpu"]}
    for task, keys in NUMBERS.items():
        vals = ref["groups"][task]["runs"][0]["values"]
        out.update({f"{task}.{k}": vals[k] for k in keys})
    return out


def bands(rows: list[dict]) -> dict[str, list[float]]:
    keys = [f"{t}.{k}" for t, ks in NUMBERS.items() for k in ks]
    return {k: [round(min(r[k] for r in rows) / (1 + MARGIN), 4),
                round(max(r[k] for r in rows) * (1 + MARGIN), 4)] for k in keys}


def write(rows: list[dict], bnds: dict) -> None:
    out = ROOT / "reports" / "bench"
    (out / "instrument-bands.json").write_text(json.dumps({"rows": rows, "bands": bnds,
                                                           "margin": MARGIN}, indent=2) + "\n")
    keys = list(bnds)
    lines = ["# Retrained instruments across machine kinds", "",
             "`python bench/instrument_bands.py` (its docstring says how): the default profile's "
             "tokenizer and FeatNet retrained under each kernel setting, one thread, seed 0 (wall times from a shared, loaded 2-core VM: not speed figures).", "",
             "| setting | " + " | ".join(keys) + " | wall |", "|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        wall = f"{r['wall_s']:.0f} s" if "wall_s" in r else "–"
        lines.append(f"| {r['setting']} | " + " | ".join(f"{r[k]:.4g}" for k in keys) +
                     f" | {wall} |")
    lines += [f"| **band** (±{MARGIN:.0%}) | " + " | ".join(f"[{a:g}, {b:g}]" for a, b in
                                                          bnds.values()) + " | |", ""]
    (out / "instrument-bands.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="native,aten-avx2,onednn-avx2,mkl-compatible")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixbench-bands-") as tmp:
        work = Path(tmp)
        params = retrained_params(work)
        rows = []
        for name in args.settings.split(","):
            rows.append(run_setting(name, params, work))
            print(json.dumps(rows[-1]), flush=True)
    rows.append(from_git(yaml.safe_load((ROOT / "params.yaml").read_text())["profile"]))
    bnds = bands(rows)
    write(rows, bnds)
    print(yaml.safe_dump({"sanity": {rows and yaml.safe_load(
        (ROOT / "params.yaml").read_text())["profile"]: bnds}}, default_flow_style=None))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
