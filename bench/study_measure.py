"""`pixbench study` on the local SLURM cluster, and the paper-scale study's wall time under the DAG.

    . slurm/local-cluster/env.sh && python bench/study_measure.py [--skip-local]

Local (measured, one run, ratios on a shared CPU): the tiny every-track study (tests/studyrepo.py,
24 cells) as a DAG of jobs on a cluster profile with as many slots as cores (2), against
sequential `dvc repro` of the same cells on the same machine; and the time `pixbench study
submit --no-wait` takes for 50 cells (submission only: the jobs are cancelled right after).
--skip-local keeps the local figures of the previous reports/bench/study/study.json.

Paper scale (estimated, analytic): the real DAG of dvc.yaml for the paper's study (imagenet28,
its own sweeps as a profile in `studies`: classification S/B x 5 patches x 2 seeds, locality
shuffle, MAE-B, DiT-L at p=1 and p=2), each training cell's time = its train FLOPs
(models/flops.py) / (GPUs of its task in slurm/clusters/example-h100.yaml x 989 TFLOP/s bf16 x
40% MFU). The prepare cells and the record job take the scale rehearsals' figures, read here
at run time (reports/bench/scale-prepare.json: wall on the profile's prepare node;
dvc-record.json: DVC's cost of recording), and the memory per node at ImageNet-1k comes from
scale-prepare.json and scale-dit-memory.json. Sequential = the sum (what `dvc repro` with
PIXBENCH_CLUSTER does, one blocking job after another); DAG = the longest path; the record
job runs once after both. Writes reports/bench/study.md and reports/bench/study/study.json.
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
# pyproject's pythonpath (tools, bench) plus tests/ for studyrepo
sys.path[:0] = [str(ROOT / p) for p in ("src", "tests", "tools", "bench")]

import study_report  # noqa: E402 - bench/, on the path above

MEASURED = ROOT / "reports" / "bench"
STUDY_JSON = MEASURED / "study" / "study.json"
PEAK, MFU, IMAGENET = 989e12, 0.40, 1_281_167
GIB, MIB = 1 << 30, 1 << 20
VQ_GFLOPS = 215  # VQ-f8 encoder at 256 px per image: a guess from an old note, not measured
INCEPTION = 2048 + 1008  # features + logits per sample gathered on rank 0 (scale-dit-memory.md)
PAPER = {"sweep": {"sizes": ["s", "b"], "patches": [1, 2, 4, 7, 14], "seeds": [0, 1]},
         "mae_sweep": {"sizes": ["b"], "patches": [1, 2, 4], "seeds": [0],
                       "alt_target": "norm_pix", "alt_patches": [2]},
         "gen_sweep": {"sizes": ["l"], "patches": [1, 2], "seeds": [0], "tokenizer_seed": 0},
         "locality_run": ["shuffle"]}
# The measurement files this script reads, and the slow bench that writes each.
SOURCES = {"prepare": ("scale-prepare.json", "pytest bench/test_scale_prepare.py -m slow"),
           "dvc": ("dvc-record.json", "pytest bench/test_dvc_record.py -m slow"),
           "dit": ("scale-dit-memory.json", "pytest bench/test_scale_dit_memory.py -m slow"),
           "loader": ("scale-loader.json", "pytest bench/test_scale_loader.py -m slow")}


def load_measured() -> dict:
    """The scale rehearsals' JSONs, by SOURCES key; a missing file exits naming its bench."""
    out = {}
    for key, (name, how) in SOURCES.items():
        path = MEASURED / name
        if not path.is_file():
            raise SystemExit(f"{path}: missing (needed by bench/study_measure.py); `{how}` "
                             "writes it")
        out[key] = json.loads(path.read_text())
    return out


def need(m: dict, key: str, *path):
    """m[key][path...], or exit naming the file, the field and the bench that writes it: an
    estimate from a stale guess is what this script replaced."""
    node = m[key]
    for i, k in enumerate(path):
        if isinstance(node, list) and isinstance(k, dict):  # the list entry matching k
            node = next((x for x in node if k.items() <= x.items()), None)
        elif isinstance(node, dict):
            node = node.get(k)
        else:
            node = None
        if node is None:
            name, how = SOURCES[key]
            where = ".".join(json.dumps(p, sort_keys=True) if isinstance(p, dict) else str(p)
                             for p in path[:i + 1])
            raise SystemExit(f"reports/bench/{name}: no {where} (needed by "
                             f"bench/study_measure.py); re-run `{how}`")
    return node


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


def prepare_setting(spec) -> str:
    """A prepare cell's key in scale-prepare.json's extrapolation: `28px-fast2`, `256px`."""
    d = spec.data
    return f"{d.image_size}px" + (f"-fast{d.fast_decode:g}" if d.fast_decode else "")


def prepare_figures(m: dict, spec, cores: int) -> dict:
    """The measured rehearsal extrapolated to ImageNet-1k for this prepare on a node of the
    profile's `cores` (the wall column of that node shape: one job, as a study runs it)."""
    key = prepare_setting(spec)
    return {"setting": key, "node": f"one {cores}-core node", "cores": cores,
            "wall_h": need(m, "prepare", "derived", "extrapolation", key,
                           f"wall_h_one_{cores}_core_node"),
            "core_h": need(m, "prepare", "derived", "extrapolation", key, "cpu_core_hours"),
            "disk_gib": need(m, "prepare", "derived", "extrapolation", key, "disk_gib")}


def _cell_hours(cell, res: dict, m: dict) -> float:
    """Wall hours of one cell on its job's resources: a prepare from the rehearsal, a GPU cell
    at 40% MFU from analytic train FLOPs x images."""
    from pixbench.models.flops import block_forward_flops, mae_forward_flops, vit_train_flops
    from pixbench.models.dit import DIT_SIZES
    from pixbench.models.mae import DECODER_SIZES
    from pixbench.models.vit import SIZES, vit_shape

    s, task, gpus = cell.spec, cell.task, max(1, res["gpus_per_node"])
    if task == "prepare":
        return prepare_figures(m, s, res["cpus_per_task"])["wall_h"]
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
        flops = VQ_GFLOPS * 1e9 * IMAGENET  # a guess: study.md says so
    else:  # vq (a loaded tokenizer: 1 step), vq-eval, featnet, report: minutes
        return 0.0
    return flops / (gpus * PEAK * MFU) / 3600


def _size_patch(run_id: str) -> tuple[str, int]:
    _, size, patch, _ = run_id.split("-")[:4]  # dit-l-p1-s0
    return size, int(patch[1:])


def record_cost(m: dict, cells, res) -> dict:
    """The record job (once, after every cell): what DVC hashes and copies. Now each data
    output is an identity file (seconds, whatever the data's size: dvc-record.json); before,
    the prepared caches and the latents were DVC-cached outs: md5 + a copy into .dvc/cache at
    the measured rate, times their ImageNet-1k sizes (scale-prepare.json's disk column; the
    latents: scale-dit-memory.json's items x bytes). Run dirs (weights, samples) were cached
    outs too and are not counted: `before` is a lower bound."""
    from benchsuite.rehearsal_report import dvc_record_cost

    for k in ("identity_s", "cached_out_s", "cached_out_copied_bytes"):
        need(m, "dvc", k)
    rec = m["dvc"]
    outs = [{"out": f"{c.name}: the {prepare_setting(c.spec)} cache",
             "gib": prepare_figures(m, c.spec, res(c)["cpus_per_task"])["disk_gib"],
             "source": "scale-prepare.json (extrapolated)"} for c in cells if c.task == "prepare"]
    lat = need(m, "dit", "derived", "imagenet", {"code": "after", "kind": "train"})
    outs += [{"out": f"{c.name}: the train latents", "source": "scale-dit-memory.json (computed)",
              "gib": round(lat["items"] * lat["item_bytes"] / GIB, 1)}
             for c in cells if c.task == "vq-encode"]
    costs = [dvc_record_cost(o["gib"], rec) for o in outs]
    for o, c in zip(outs, costs):
        o["before_h"] = round(c["before_s"] / 3600, 3)
    return {"outs": outs, "now_s": round(sum(c["now_s"] for c in costs), 2),
            "now_per_file_s": rec["identity_s"],
            "before_h": round(sum(c["before_s"] for c in costs) / 3600, 3),
            "before_copy_gib": round(sum(c["before_copy_gib"] for c in costs), 1),
            "s_per_gib": round(rec["cached_out_s"] / rec["cached_out_copied_bytes"] * GIB, 2),
            "measured_gib": rec["cached_out_copied_bytes"] / GIB}


def _paper_cells(work: Path):
    """The paper's study as a profile in `studies` (its own sweeps), its cells from DVC."""
    import yaml
    from studyrepo import make_study_repo

    from pixbench.cli.options import pixbench_command
    from pixbench.study.dag import load_cells

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(profile="imagenet28", studies=["imagenet28"])
    params["profiles"]["imagenet28"].update(
        sweep=PAPER["sweep"], mae_sweep=PAPER["mae_sweep"], gen_sweep=PAPER["gen_sweep"],
        locality={"run": PAPER["locality_run"]})
    repo = make_study_repo(work / "paper", params)
    os.chdir(repo)  # DVC names stages relative to the working directory
    return load_cells(repo, cli=pixbench_command)


def paper_estimate(work: Path, m: dict) -> dict:
    from pixbench.cluster import load_cluster

    cells = _paper_cells(work)
    profile = load_cluster("example-h100")
    res = lambda c: profile.resources(c.task)  # noqa: E731 - the job's resources of a cell
    hours, finish = {}, {}
    for c in cells:  # parents first
        hours[c.name] = _cell_hours(c, res(c), m)
        finish[c.name] = hours[c.name] + max((finish[p] for p in c.parents), default=0.0)
    end = max(finish, key=finish.get)
    path, by_name = [end], {c.name: c for c in cells}
    while parents := by_name[path[-1]].parents:
        path.append(max(parents, key=finish.get))
    gpu_h = sum(hours[c.name] * res(c)["gpus_per_node"] for c in cells)
    record = record_cost(m, cells, res)
    prepares = [{"cell": c.name, **prepare_figures(m, c.spec, res(c)["cpus_per_task"])}
                for c in cells if c.task == "prepare"]
    tail = record["now_s"] / 3600  # the record job runs after every cell, on either schedule
    return {"cells": len(cells), "sequential_days": round((sum(hours.values()) + tail) / 24, 2),
            "dag_days": round((finish[end] + tail) / 24, 2), "gpu_hours": round(gpu_h),
            "prepare_core_hours": round(sum(p["core_h"] for p in prepares), 2),
            "critical_path": [f"{n} ({hours[n]:.2f} h)" for n in reversed(path)]
            + [f"record ({record['now_s']} s)"],
            "prepare": prepares, "record": record, "notes": notes(m),
            "memory": memory_rows(m, prepares[0]["cores"]),
            "peak_tflops": PEAK / 1e12, "mfu": MFU,
            "assumptions": f"H100 {PEAK / 1e12:.0f} TFLOP/s bf16 x {MFU:.0%} MFU; GPUs and "
                           "CPUs per task from slurm/clusters/example-h100.yaml; sweeps "
                           + json.dumps(PAPER)}


def _row(key: str, what: str, now: float, before: float | None, unit: str, how: str,
         src: str) -> dict:
    return {"key": key, "what": what, "now": now, "before": before, "unit": unit, "how": how,
            "source": src}


def memory_rows(m: dict, cores: int) -> list[dict]:
    """Memory per node at ImageNet-1k, each figure with its file and how it was obtained; a
    prepare on the profile's `cores`, DiT at the rehearsal's ranks per node. `before`: None
    where the file holds no figure for the code before issue 26."""
    rows, dit_world = [], need(m, "dit", "world")
    for size in (28, 256):
        old = next((n for n in m["prepare"]["derived"]["per_core"]
                    if n["code"] == "before" and n["size"] == size), None)
        rows.append(_row(
            f"prepare-{size}", f"prepare {size}px, one {cores}-core node (parent + {cores} "
            "decode workers)", need(m, "prepare", "derived", "per_core",
                                    {"code": "branch", "size": size}, "node_peak_gib", str(cores)),
            old and old["node_peak_gib"].get(str(cores)), "GiB",
            f"extrapolated: measured parent and per-worker peaks x {cores} + measured plan state",
            "scale-prepare.json derived.per_core"))
    point = need(m, "prepare", "plan_state", "points")[-1]
    old = (m["prepare"].get("before", {}).get("plan_state", {}).get("points") or [{}])[-1]
    rows.append(_row("plan", "submitting process: make_plan at ImageNet-1k's N",
                     round(point["make_plan"] / MIB, 1),
                     old.get("make_plan") and round(old["make_plan"] / MIB, 1), "MiB",
                     f"measured: real make_plan on a synthetic listing of "
                     f"{point['n_train'] + point['n_val']:,} names",
                     "scale-prepare.json plan_state"))
    for kind in ("train", "eval"):
        now = need(m, "dit", "derived", "imagenet", {"code": "after", "kind": kind})
        old = next((r for r in m["dit"]["derived"]["imagenet"]
                    if r["code"] == "before" and r["kind"] == kind), None)
        ranks = round(now["node_gib"] / now["per_rank_gib"])
        share = f" (eval: a rank's 1/{ranks} share)" if kind == "eval" else ""
        what = f"DiT {kind} ({now['items']:,} {'latents' if kind == 'train' else 'samples'})"
        for col, label in (("per_rank_gib", "per rank"), ("node_gib", f"per {ranks}-rank node")):
            rows.append(_row(
                f"dit-{kind}-{col.split('_')[0]}", f"{what}, {label}, growth with N",
                round(now[col], 2), old and round(old[col], 2), "GiB",
                f"extrapolated: measured growth per item ({dit_world} gloo ranks) x "
                f"ImageNet-1k's items{share}", "scale-dit-memory.json derived.imagenet"))
    return rows


def notes(m: dict) -> dict:
    """The rehearsals' figures the report's notes cite (study.md shows nothing study.json
    lacks): DiT's fixed part and rank-0 hand-over, the loader's cores, the prepare's tree."""
    dit, tree = m["dit"], need(m, "prepare", "tree")
    ev = need(m, "dit", "derived", "imagenet", {"code": "after", "kind": "eval"})
    after = [r for r in need(m, "dit", "rows") if r["code"] == "after"]
    fixed = {k: round(min((r for r in after if r["kind"] == k and r["rank"] == 0),
                          key=lambda r: r["n"])["peak_mib"]) for k in ("train", "eval")}
    n_max = max(r["n"] for r in after if r["kind"] == "eval")
    slope = need(m, "dit", "derived", "slopes", {"code": "after", "kind": "eval", "rank": 0})
    return {"dit_world": dit["world"], "dit_fixed_mib": fixed, "dit_eval_n_max": n_max,
            "dit_sent_to_rank0_mib": round(max(r["sent_bytes"] for r in after
                                               if r["n"] == n_max) / MIB, 1),
            "dit_rank0_eval_b_per_sample": round(slope["bytes_per_item"]),
            "eval_samples": ev["items"],
            # torch-fidelity's 10,000 x N float32 blocks; features + logits, float32
            "pr_blocks_gb": round(10_000 * ev["items"] * 4 / 1e9, 1),
            "features_gb": round(ev["items"] * INCEPTION * 4 / 1e9, 1),
            "loader_cores_per_rank": {k: round(v, 1) for k, v in
                                      need(m, "loader", "cores_per_rank").items()},
            "loader_feed_img_s": round(need(m, "loader", "demand", "feed_target_img_per_s")),
            "loader_max_cores": need(m, "loader", "max_cores_per_rank"),
            "prepare_tree": f"{tree['jpeg']}, mean {tree['mean_jpeg_kib']} KiB",
            "vq_encode_gflops_guess": VQ_GFLOPS}


def previous_local() -> dict | None:
    """--skip-local: the local figures of the last full run, marked as such (they are
    measurements: an estimate run must not drop them)."""
    if not STUDY_JSON.is_file():
        return None
    local = json.loads(STUDY_JSON.read_text()).get("local")
    return local and {**local, "kept_from_earlier_run": True}


def main() -> None:
    m = load_measured()  # first: a missing measurement fails before minutes of work
    work = Path(tempfile.mkdtemp(prefix="pixbench-study-"))
    here = os.getcwd()
    try:
        local = previous_local() if "--skip-local" in sys.argv else measure_local(work)
        paper = paper_estimate(work, m)
    except BaseException:
        print(f"kept for a look: {work}", file=sys.stderr)
        raise
    finally:
        os.chdir(here)
    shutil.rmtree(work, ignore_errors=True)
    out = {"local": local, "paper": paper}
    # not reports/bench/*.json: the report reads each of those as a suite result (`make bench`)
    STUDY_JSON.parent.mkdir(exist_ok=True)
    STUDY_JSON.write_text(json.dumps(out, indent=2) + "\n")
    (MEASURED / "study.md").write_text(study_report.markdown(out))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
