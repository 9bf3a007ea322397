"""`pixbench study` on the local SLURM cluster, and the paper-scale study's wall time under the DAG.

    . slurm/local-cluster/env.sh && python bench/study_measure.py [--skip-local]

Local (measured, one run, ratios on a shared CPU): the tiny every-track study (tests/studyrepo.py,
24 cells) as a DAG of jobs on a cluster profile with as many slots as cores (2), against
sequential `dvc repro` of the same cells on the same machine; and the time `pixbench study
submit --no-wait` takes for 50 cells (submission only: the jobs are cancelled right after).

Paper scale (estimated, analytic): the real DAG of dvc.yaml for the paper's study (imagenet28:
classification S/B x 5 patches x 2 seeds, locality shuffle, MAE-B, DiT-L at p=1 and p=2),
each training cell's time = its train FLOPs (models/flops.py) / (GPUs of its task in
slurm/clusters/example-h100.yaml x 989 TFLOP/s bf16 x 40% MFU). Sequential = the sum (what
`dvc repro` with PIXBENCH_CLUSTER does, one blocking job after another); DAG = the longest path.
Writes reports/bench/study.md and reports/bench/study/study.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

PEAK, MFU, IMAGENET = 989e12, 0.40, 1_281_167
PAPER = {"sweep": {"sizes": ["s", "b"], "patches": [1, 2, 4, 7, 14], "seeds": [0, 1]},
         "mae_sweep": {"sizes": ["b"], "patches": [1, 2, 4], "seeds": [0],
                       "alt_target": "norm_pix", "alt_patches": [2]},
         "gen_sweep": {"sizes": ["l"], "patches": [1, 2], "seeds": [0], "tokenizer_seed": 0},
         "locality_run": ["shuffle"]}
CPU_HOURS = {"prepare": 1.2}  # scale.md: ImageNet at 28px, ~1.2 h on 2 decode workers (estimate)


def _env(repo: Path, cluster_dir: Path | None = None, threads: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXBENCH_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT / "src"))
    if cluster_dir:
        env.update(PIXBENCH_CLUSTER="slots", PIXBENCH_CLUSTER_DIR=str(cluster_dir))
    return env


def measure_local(work: Path) -> dict:
    from studyrepo import make_study_repo, study_params

    cdir = work / "clusters"
    cdir.mkdir()
    nproc = os.cpu_count()
    # the node has 4 SLURM CPUs; 2 per job = 2 jobs at once = the machine's 2 cores
    (cdir / "slots.yaml").write_text("partition: debug\ncpus_per_task: 2\nmem_gb: 2\n"
                                     "timeout_min: 30\nsignal_delay_s: 30\n")
    dag, seq = make_study_repo(work / "dag", study_params()), make_study_repo(work / "seq",
                                                                                study_params())
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pixbench.cli", "study", "submit", "--poll", "2"],
                         cwd=dag, env=_env(dag, cdir), capture_output=True, text=True)
    t_dag = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=seq,
                         env=_env(seq, threads=nproc), capture_output=True, text=True)
    t_seq = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    params = study_params(patches=(2, 4), seeds=tuple(range(14)))  # 50 cells
    big = make_study_repo(work / "fifty", params)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pixbench.cli", "study", "submit", "--no-wait"],
                         cwd=big, env=_env(big, cdir), capture_output=True, text=True)
    t_submit = time.perf_counter() - t0
    subprocess.run([sys.executable, "-m", "pixbench.cli", "study", "cancel"], cwd=big,
                   env=_env(big, cdir), capture_output=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"cells_tiny_study": 24, "slots": 2, "dag_wall_s": round(t_dag, 1),
            "sequential_dvc_repro_s": round(t_seq, 1), "speedup": round(t_seq / t_dag, 2),
            "submit_no_wait_s": round(t_submit, 1), "submit_line": out.stdout.splitlines()[0]}


def _cell_hours(cell, gpus: int) -> float:
    """Wall hours of one cell on `gpus` GPUs at 40% MFU; analytic train FLOPs x images."""
    from pixbench.models.flops import block_forward_flops, mae_forward_flops, vit_train_flops
    from pixbench.models.dit import DIT_SIZES
    from pixbench.models.mae import DECODER_SIZES
    from pixbench.models.vit import SIZES, vit_shape

    s, task = cell.spec, cell.task
    if task in CPU_HOURS:
        return CPU_HOURS[task]
    if task in ("classify", "mae-finetune", "mae-scratch", "mae-linprobe"):
        shape = vit_shape(size=s.size, patch=s.patch, image_size=28, in_chans=3,
                          num_classes=1000, pool="avg")
        per_img = vit_train_flops(shape) / (3 if task == "mae-linprobe" else 1)  # frozen: fwd
        flops = per_img * IMAGENET * s.classify.epochs
    elif task == "mae-pretrain":
        enc, dec = SIZES[s.size], DECODER_SIZES[s.size]
        fwd = mae_forward_flops(tokens=(28 // s.patch) ** 2, patch_dim=s.patch ** 2 * 3,
                                enc_dim=enc.dim, enc_depth=enc.depth, mlp_ratio=4.0,
                                dec_dim=dec.dim, dec_depth=dec.depth, mask_ratio=0.75)
        flops = 3 * fwd * IMAGENET * s.pretrain.epochs
    elif task in ("dit", "dit-eval"):
        size, patch = (s.size, s.patch) if task == "dit" else _size_patch(s.dit["run_id"])
        d = DIT_SIZES[size]
        fwd = d["depth"] * block_forward_flops((32 // patch) ** 2, d["hidden_size"], 4.0)
        samples = s.sample.num_samples
        if task == "dit":  # the FID-vs-step probes sample during training too
            probes = s.dit.steps // s.dit.curve_every_steps if s.dit.curve_every_steps else 0
            flops, samples = 3 * fwd * s.dit.steps * s.dit.batch_size, probes * s.dit.curve_samples
        else:
            flops = 0.0
        flops += 2 * fwd * s.sample.steps * samples if s.sample else 0.0  # cfg: 2 passes
    elif task == "vq-encode":
        flops = 215e9 * IMAGENET  # scale.md: VQ-f8 encoder ~215 GFLOPs/img (estimate)
    else:  # vq (a loaded tokenizer: 1 step), vq-eval, featnet, report: minutes
        return 0.0
    return flops / (gpus * PEAK * MFU) / 3600


def _size_patch(run_id: str) -> tuple[str, int]:
    _, size, patch, _ = run_id.split("-")[:4]  # dit-l-p1-s0
    return size, int(patch[1:])


def paper_estimate(work: Path) -> dict:
    import yaml
    from studyrepo import make_study_repo

    from pixbench.cli.options import pixbench_command
    from pixbench.cluster import load_cluster
    from pixbench.study.dag import load_cells

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(profile="imagenet28", sweep=PAPER["sweep"], mae_sweep=PAPER["mae_sweep"],
                  gen_sweep=PAPER["gen_sweep"])
    params["locality"]["run"] = PAPER["locality_run"]
    repo = make_study_repo(work / "paper", params)
    os.chdir(repo)
    cells = load_cells(repo, cli=pixbench_command)
    profile = load_cluster("example-h100")
    hours, finish = {}, {}
    for c in cells:  # parents first
        gpus = max(1, profile.resources(c.task)["gpus_per_node"])
        hours[c.name] = _cell_hours(c, gpus)
        finish[c.name] = hours[c.name] + max((finish[p] for p in c.parents), default=0.0)
    end = max(finish, key=finish.get)
    path = [end]
    while cells_by := {c.name: c for c in cells}[path[-1]].parents:
        path.append(max(cells_by, key=finish.get))
    gpu_h = sum(hours[c.name] * max(1, profile.resources(c.task)["gpus_per_node"]) for c in cells)
    return {"cells": len(cells), "sequential_days": round(sum(hours.values()) / 24, 1),
            "dag_days": round(finish[end] / 24, 2), "gpu_hours": round(gpu_h),
            "critical_path": [f"{n} ({hours[n]:.1f} h)" for n in reversed(path)],
            "assumptions": f"H100 {PEAK / 1e12:.0f} TFLOP/s bf16 x {MFU:.0%} MFU; GPUs per task "
                           "from slurm/clusters/example-h100.yaml; sweeps " + json.dumps(PAPER)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="pixbench-study-"))
    here = os.getcwd()
    try:
        local = None if "--skip-local" in sys.argv else measure_local(work)
        paper = paper_estimate(work)
    except BaseException:
        print(f"kept for a look: {work}", file=sys.stderr)
        raise
    finally:
        os.chdir(here)
    shutil.rmtree(work, ignore_errors=True)
    out = {"local": local, "paper": paper}
    # not reports/bench/*.json: the report reads each of those as a suite result (`make bench`)
    folder = ROOT / "reports" / "bench" / "study"
    folder.mkdir(exist_ok=True)
    (folder / "study.json").write_text(json.dumps(out, indent=2) + "\n")
    (ROOT / "reports" / "bench" / "study.md").write_text(markdown(out))
    print(json.dumps(out, indent=2))


def markdown(out: dict) -> str:
    local, paper = out["local"], out["paper"]
    lines = ["# The whole study as a DAG of SLURM jobs (`pixbench study`)", "",
             "Written by `bench/study_measure.py` (figures in study/study.json).", ""]
    if local:
        lines += ["## Local SLURM cluster (measured, one run each; shared 2-core CPU)", "",
                  f"Tiny every-track study, {local['cells_tiny_study']} cells, "
                  f"{local['slots']} job slots (= cores):", "",
                  "| how | wall s |", "|---|---|",
                  f"| `pixbench study submit` (DAG of jobs, blocking) | {local['dag_wall_s']} |",
                  f"| sequential `dvc repro`, same cells, no SLURM | "
                  f"{local['sequential_dvc_repro_s']} |", "",
                  f"Ratio sequential / DAG: {local['speedup']}. Submission of 50 cells "
                  f"(`--no-wait`, DVC graph + specs + sbatch): {local['submit_no_wait_s']} s "
                  f"(`{local['submit_line']}`).", ""]
    lines += ["## Paper scale (estimated from analytic FLOPs)", "",
              f"{paper['cells']} cells; {paper['assumptions']}.", "",
              f"- sequential (`dvc repro`, one blocking job after another): "
              f"{paper['sequential_days']} days",
              f"- DAG (`pixbench study submit`, bounded by its critical path): "
              f"{paper['dag_days']} days",
              f"- GPU-hours: {paper['gpu_hours']}",
              f"- critical path: {' -> '.join(paper['critical_path'])}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
