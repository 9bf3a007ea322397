"""`pixbench report`: REPORT.md and PNG plots from every classification metrics file present.

Deterministic by construction: runs are sorted, numbers formatted with fixed precision, PNGs
written without timestamps, so the same metrics give byte-identical files.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pixbench.config import Params, Paths, spec_diff
from pixbench.config.pipeline import sweep_runs
from pixbench.errors import UserError
from pixbench.eval.stats import fmt_welch, welch
from pixbench.paper import LOCALITY_NOTE, PAPER, RECIPE_NOTE
from pixbench.report.bench import bench_section
from pixbench.report.conclusions import conclusions_section
from pixbench.verify.conclusions import cell_gate
from pixbench.report.html import markdown_to_html
from pixbench.report.gen import gen_section
from pixbench.report.mae import mae_section
from pixbench.report.plots import plot_accuracy, plot_curves, plot_time
from pixbench.report.dataset import dataset_name, dataset_section, not_about, paper_dataset
from pixbench.report.tables import (PLATEAU_NOTE, classify_table, cost_to_accuracy_table,
                                    locality_table, paper_table, plateau_table)
from pixbench.runio import atomic_write_bytes, read_json

FIG_DIR = "figures"


def check_run(path: Path, m: dict, spec) -> None:
    """Refuse a run that the current params.yaml would not produce: a debug run (another params
    file, a hand edit) or a stale one. Its spec digest must equal the one params.yaml gives."""
    if m.get("spec_digest") != spec.digest():
        spec_file = path.with_name("spec.json")
        old = read_json(spec_file, "run spec").get("spec", {}) if spec_file.exists() else {}
        diff = "; ".join(spec_diff(old, spec.canonical())[:3]) or "digest differs"
        raise UserError(f"{path.parent}: refused, made with other settings than params.yaml "
                        f"({diff}); re-run it (dvc repro) or remove it")


def collect_runs(runs_dir: Path, params: Params) -> list[dict]:
    """metrics.json (+ curve.json, manifest.json) of every finished classification run of the
    current sweep and locality matrix (config.pipeline.sweep_runs): runs of other seeds or
    patch sizes left on disk are not the current sweep's, and are not shown. Each is checked
    to be a run of these params (check_run)."""
    rows = []
    for run in sweep_runs(params):
        path = runs_dir / run.run_id / "metrics.json"
        if run.task != "classify" or not path.exists():
            continue
        m = read_json(path, "metrics")
        check_run(path, m, run.spec)
        curve = path.with_name("curve.json")
        m["_curve"] = read_json(curve, "curve") if curve.exists() else []
        man = path.with_name("manifest.json")
        m["_manifest"] = read_json(man, "run manifest") if man.exists() else {}
        rows.append(m)
    return rows


def aggregate(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Group baseline runs (no locality variant) by (dataset, image size, model size, patch);
    seeds are the replicates."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("variant") is None:
            groups[(r["dataset"], r["image_size"], r["size"], r["patch"])].append(r)
    return dict(sorted(groups.items()))


def environment(rows: list[dict]) -> list[str]:
    seen = sorted({(r["_manifest"].get("cpu", "?"), r["_manifest"].get("gpu", ""),
                    r["device"], r["_manifest"].get("versions", {}).get("torch", "?"),
                    r["_manifest"].get("versions", {}).get("timm", "?"),
                    str(r["_manifest"].get("torch_threads", "?"))) for r in rows})
    return [f"- {cpu}{' / ' + gpu if gpu else ''}, device {dev}, torch {t}, timm {tm}, "
            f"{th} threads" for cpu, gpu, dev, t, tm, th in seen]


def recipe_summary(params: Params, rows: list[dict]) -> list[str]:
    prof = params.active
    c, d = prof.classify, prof.data
    trained = sorted({r["epochs"] for r in rows if isinstance(r.get("epochs"), int)})
    budget = f"{c.epochs} epochs" if c.min_steps is None else (
        f"{c.epochs} epochs but at least {c.min_steps} optimizer steps (min_steps: "
        f"{', '.join(map(str, trained)) or '?'} epochs trained on this dataset)")
    return [f"- Profile `{params.profile}`: {d.source} at {d.image_size}x{d.image_size}, "
            f"train subset {c.train_subset or 'all'}, val {c.val_subset or 'all'} images; "
            f"{budget}, batch {c.batch_size}, AdamW lr {c.optim.lr:g} (per "
            f"{c.optim.lr_ref_batch}), wd {c.optim.weight_decay:g}, warm-up "
            f"{c.optim.warmup_epochs:g} ep + cosine, label smoothing {c.label_smoothing:g}, "
            f"pool {c.pool}, augmentation {c.augment.model_dump()}.",
            f"- Sweep: sizes {params.sweep.sizes}, patches {params.sweep.patches}, seeds "
            f"{params.sweep.seeds}. Every patch size uses this one recipe; only the token size "
            "differs."]


CLASSIFY_NOTE = ("Top-1 is on the full validation split (mean ± sample std over n seeds). "
                 "GFLOPs are analytic (matmuls, attention included; train = 3x forward). img/s "
                 "and memory are measured on the device below: on CPU, peak RSS is the whole "
                 "process (libraries included) during timed train steps and step mem is that "
                 "peak minus the memory resident just before them; on GPU both are allocator "
                 "figures.")
LOCALITY_INTRO = ("Top-1 % with a fixed pixel permutation (train and val alike) or another "
                  "position embedding; everything else is the recipe above. A p=1 model with "
                  "learned position embeddings is exactly equivariant to any pixel permutation "
                  "(tests/test_locality.py), so its shuffle column should differ from its "
                  "baseline only by seed noise; patches lose their locality prior.")


def pixel_vs_best(groups: dict[tuple, list[dict]]) -> list[str]:
    """Pixel tokens (p=1) against the best patch size (by mean top-1), per model size."""
    out = []
    for size in sorted({k[2] for k in groups}):
        cells = {k[3]: [r["top1"] for r in runs] for k, runs in groups.items() if k[2] == size}
        patches = [p for p in cells if p != 1]
        if 1 not in cells or not patches:
            continue
        best = max(patches, key=lambda p: sum(cells[p]) / len(cells[p]))
        gates = {p: cell_gate(runs) for (_, _, s, p), runs in groups.items()
                 if s == size and p in (1, best)}
        if any(gates.values()):  # a stalled or chance-level model gets a warning, no test
            out.append(f"- ViT-{size.upper()}: pixels (p=1) vs p={best}: no test; " + "; ".join(
                f"p={p}: {why}" for p, why in gates.items() if why) + ".")
            continue
        out.append(f"- ViT-{size.upper()}: pixels (p=1) vs the best patch size p={best}: "
                   f"{fmt_welch(welch(cells[1], cells[best]))} (Welch's t-test, n = "
                   f"{len(cells[1])} and {len(cells[best])} seeds).")
    return out


def classify_section(params: Params, rows: list[dict], out_dir: Path) -> list[str]:
    lines = ["## Classification", ""] + recipe_summary(params, rows) + [""]
    if not rows:
        lines += [f"No finished runs for profile {params.profile}.", ""]
    by_dataset: dict[tuple, dict] = defaultdict(dict)
    for key, runs in aggregate(rows).items():
        by_dataset[key[:2]][key] = runs
    for (dataset, image_size), sub in by_dataset.items():
        stem = f"classify_{params.profile}_{dataset}{image_size}"
        lines += [f"### {dataset_name(params.active.data)} {image_size}x{image_size}", ""]
        lines += classify_table(sub) + [""]
        figs = (plot_accuracy(sub, out_dir / FIG_DIR, stem)
                + [plot_time(sub, out_dir / FIG_DIR, stem), plot_curves(sub, out_dir / FIG_DIR, stem)])
        lines += [f"![{f}]({FIG_DIR}/{f})" for f in figs] + [""]
        lines += pixel_vs_best(sub) + ["", "Cost to first reach a top-1 on the learning-curve "
                                       "subset (mean over seeds; – never reached):", ""]
        lines += cost_to_accuracy_table(sub) + [""]
        lines += ["Per seed: where the train loss sat early (plateau) and when it left it:",
                  ""] + plateau_table(sub) + ["", PLATEAU_NOTE, ""]
    return lines + [CLASSIFY_NOTE, ""] + paper_section(params)


def paper_section(params: Params) -> list[str]:
    """The paper's supervised table, only beside the dataset it is about."""
    data = params.active.data
    name = paper_dataset(data)
    if name is None:
        return not_about("supervised", data, "CIFAR-100 and ImageNet")
    return ["### The paper's numbers", ""] + paper_table(name) + [
        "", RECIPE_NOTE, "Profiles other than the paper recipe are proxies: compare trends, "
        "not absolute values.", ""]


def run(spec, paths: Paths, *, tasks: dict, stale: str = "error", device: str = "auto",
        progress: bool = True) -> dict:
    """The `report` task (a ReportSpec): the report of the params file and profile it names;
    `tasks`: the task table (what each task's results are)."""
    from pixbench.config import load_params

    from pixbench.config.cells import check_study_file

    params = load_params(spec.params_file)
    check_study_file(params, spec.params_file)
    params = params.switch(spec.profile)
    return {"run_id": spec.run_id, "path": str(build_report(params, paths, tasks))}


def build_report(params: Params, paths: Paths, tasks: dict) -> Path:
    """REPORT.md, report.html and figures of the active profile, in its own folder
    (config.cells.report_subdir), and its headline numbers (summary.py) for DVC."""
    from pixbench.config.cells import report_subdir
    from pixbench.names import check_name
    from pixbench.report.summary import write_summary

    sub = report_subdir(params, check_name(params.profile, "profile"))
    out_dir = Path(paths.reports_dir) / sub
    rows = collect_runs(paths.runs_dir / params.profile, params)
    title = f"pixbench report: profile `{params.profile}`, {dataset_name(params.active.data)}"
    lines = [f"# {title}", "",
             "What does it cost, and what does it buy, to make every pixel a token instead of "
             f"every patch? ({PAPER})", ""]
    lines += dataset_section(params, paths)
    lines += conclusions_section(params, paths, tasks)
    lines += classify_section(params, rows, out_dir)
    loc = locality_table(rows)
    if loc:
        lines += ["## Locality", "", LOCALITY_INTRO, ""] + loc + ["", LOCALITY_NOTE, ""]
    lines += mae_section(params, paths.runs_dir / params.profile, out_dir, FIG_DIR)
    lines += gen_section(params, paths.runs_dir / params.profile, out_dir, FIG_DIR)
    if not sub:  # the compute benchmark is the default study's, not another dataset's
        lines += bench_section(out_dir / "bench", out_dir)
    lines += ["## Environment", ""] + environment(rows) + [""]
    path = out_dir / "REPORT.md"
    text = "\n".join(lines)
    atomic_write_bytes(path, text.encode())
    atomic_write_bytes(out_dir / "report.html", markdown_to_html(text, out_dir, title).encode())
    write_summary(params, paths, tasks)
    return path
