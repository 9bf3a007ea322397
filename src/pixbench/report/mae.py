"""The report's MAE section: from-scratch vs MAE fine-tuned at equal fine-tune budget, the
linear probe, reconstruction losses and a reconstruction figure per patch size."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from pixbench.config import Params
from pixbench.config.pipeline import sweep_runs
from pixbench.errors import UserError
from pixbench.eval.stats import fmt_ms, fmt_welch, welch
from pixbench.paper import MAE_NOTE, MAE_TABLE
from pixbench.report.dataset import not_about, paper_dataset
from pixbench.runio import read_json
from pixbench.verify.conclusions import cell_gate

TASKS = ("mae-pretrain", "mae-scratch", "mae-finetune", "mae-linprobe")


def collect_mae_runs(runs_dir: Path, params: Params) -> list[dict]:
    """The finished MAE runs of the current mae_sweep (config.pipeline.sweep_runs), each
    checked to be a run of these params; other runs on disk are not shown."""
    rows = []
    for run in sweep_runs(params):
        path = runs_dir / run.run_id / "metrics.json"
        if run.task not in TASKS or not path.exists():
            continue
        m = read_json(path, "metrics")
        if m.get("spec_digest") != run.spec.digest():
            raise UserError(f"{path.parent}: refused, made with other settings than params.yaml; "
                            "re-run it (dvc repro) or remove it")
        m["_dir"] = path.parent
        curve = path.with_name("curve.json")  # the validity gate reads it (cell_gate)
        m["_curve"] = read_json(curve, "curve") if curve.exists() else []
        rows.append(m)
    return rows


def mae_table(rows: list[dict], default_target: str) -> list[str]:
    """One row per (size, patch, target); the scratch baseline does not depend on the target."""
    cells: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    scratch: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["task"] == "mae-scratch":
            scratch[(r["size"], r["patch"])].append(r)
        else:
            cells[(r["size"], r["patch"], r.get("variant") or default_target)][r["task"]].append(r)
    head = ("| model | target | tokens | val recon loss (masked) | pre-train GFLOPs/img | "
            "scratch top-1 % | MAE fine-tune top-1 % | fine-tune − scratch | linear probe top-1 % |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (size, patch, target), by in sorted(cells.items()):
        by["mae-scratch"] = scratch.get((size, patch), [])
        def col(task: str, key: str = "top1") -> str:
            vals = [r[key] for r in by.get(task, [])]
            return f"{fmt_ms(vals, 4 if key == 'recon_loss' else 2)} (n={len(vals)})" if vals else "–"
        pre = by.get("mae-pretrain", [{}])[0]
        test = welch([r["top1"] for r in by.get("mae-finetune", [])],
                     [r["top1"] for r in by.get("mae-scratch", [])])
        # the validity gate: no Δ or test for a side that did not learn measurably
        why = "; ".join(f"{t[4:]}: {w}" for t in ("mae-finetune", "mae-scratch")
                        if by.get(t) and (w := cell_gate(by[t])))
        diff = f"no test ({why})" if why else fmt_welch(test) if test else (
            f"{np.mean([r['top1'] for r in by['mae-finetune']]) - np.mean([r['top1'] for r in by['mae-scratch']]):+.2f} pt "
            "(n too small for a test)" if by.get("mae-finetune") and by.get("mae-scratch") else "–")
        gf = f"{pre['gflops_train']:.4g}" if pre else "–"
        lines.append(f"| ViT-{size.upper()}/{patch} | `{target}` | {pre.get('tokens', '–')} | "
                     f"{col('mae-pretrain', 'recon_loss')} | {gf} | {col('mae-scratch')} | "
                     f"{col('mae-finetune')} | {diff} | {col('mae-linprobe')} |")
    return lines


def paper_mae_table() -> list[str]:
    lines = ["| model | ViT/2 MAE fine-tune | pixels MAE fine-tune | source |", "|---|---|---|---|"]
    lines += [f"| {m} | {a} | {b} | [{label}] |" for m, a, b, label in MAE_TABLE]
    return lines


def mae_section(params: Params, runs_dir: Path, out_dir: Path, fig_dir: str) -> list[str]:
    from pixbench.report.plots import plot_reconstructions

    rows = collect_mae_runs(runs_dir, params) if params.active.mae is not None else []
    if not rows:
        return []
    pre = params.active.mae.pretrain
    ft, lp = params.active.mae.finetune, params.active.mae.linprobe
    lines = ["## MAE pre-training", "",
             f"- Pre-training: mask ratio {pre.mask_ratio:g}, target `{pre.target}`, "
             f"{pre.epochs} epoch(s) of {pre.train_subset or 'all'} images, batch "
             f"{pre.batch_size}. Fine-tune and the from-scratch baseline: one recipe, "
             f"{ft.epochs} epoch(s) of {ft.train_subset or 'all'} labelled images (equal budget); "
             f"linear probe: frozen encoder, {lp.epochs} epoch(s). Top-1 on "
             f"{ft.val_subset or 'all'} val images.", ""]
    lines += mae_table(rows, pre.target) + ["", "Recon losses of different targets are in "
                                            "different units (pixels vs per-patch normalised "
                                            "pixels): compare them within a target only.", ""]
    recon = sorted((r for r in rows if r["task"] == "mae-pretrain" and r["seed"] == min(
        x["seed"] for x in rows)), key=lambda r: (r.get("variant") or "", r["size"], r["patch"]))
    if recon:
        name = plot_reconstructions([(r["display"] + (f" {r['variant']}" if r.get("variant") else ""),
                                      r["_dir"] / "reconstructions.npz") for r in recon],
                                    out_dir / fig_dir, f"mae_{params.profile}")
        lines += [f"![{name}]({fig_dir}/{name})", "",
                  "Rows: patch sizes; for each image: masked input (removed tokens grey), "
                  "reconstruction with the visible tokens pasted back, original. Fixed val "
                  "images and masks.", ""]
    points = total_train_gflops(rows, pre.batch_size)
    if points:
        name = plot_mae_compute(points, out_dir / fig_dir, f"mae_{params.profile}")
        lines += [f"![{name}]({fig_dir}/{name})", "", "Compute vs quality: each fine-tuned or "
                  "probed run is charged its pre-training too (analytic GFLOPs per image x "
                  "images seen).", ""]
    if paper_dataset(params.active.data) != "CIFAR-100":
        return lines + not_about("MAE", params.active.data, "CIFAR-100")
    return lines + ["### The paper's MAE numbers", ""] + paper_mae_table() + ["", MAE_NOTE, ""]


def total_train_gflops(rows: list[dict], pretrain_batch: int) -> list[tuple[str, int, str, float, float]]:
    """(task, patch, target, total training GFLOPs incl. pre-training, top-1) per run: the
    price of MAE's gain includes its pre-training."""
    pre = {(r["size"], r["patch"], r.get("variant"), r["seed"]): r for r in rows
           if r["task"] == "mae-pretrain"}
    out = []
    for r in rows:
        if r["task"] == "mae-pretrain":
            continue
        own = r["images_seen"] * r["gflops_train"]
        p = pre.get((r["size"], r["patch"], r.get("variant"), r["seed"]))
        extra = p["steps"] * pretrain_batch * p["gflops_train"] if p and r["task"] != "mae-scratch" else 0.0
        out.append((r["task"], r["patch"], r.get("variant") or "", own + extra, r["top1"]))
    return sorted(out)


def plot_mae_compute(points: list[tuple], out_dir: Path, stem: str) -> str:
    from pixbench.report.plots import _plt, finish_axes

    _, plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    markers = {"mae-scratch": "o", "mae-finetune": "s", "mae-linprobe": "^"}
    for task, marker in markers.items():
        pts = [p for p in points if p[0] == task]
        ax.scatter([p[3] for p in pts], [p[4] for p in pts], marker=marker, label=task[4:], zorder=3)
        for p in pts:
            ax.annotate(f"/{p[1]}{' ' + p[2] if p[2] else ''}", (p[3], p[4]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    return finish_axes(fig, ax, xlabel="total training GFLOPs per run, incl. pre-training (log)",
                       ylabel="val top-1 (%)", out_dir=out_dir,
                       name=f"{stem}_top1_vs_total_gflops.png", log_x=True)
