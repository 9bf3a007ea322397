"""`pixbench report`: REPORT.md and PNG plots from every classification metrics file present.

Deterministic by construction: runs are sorted, numbers formatted with fixed precision, PNGs
written without timestamps, so the same metrics give byte-identical files.
"""

from __future__ import annotations

import io
import json
import statistics
from collections import defaultdict
from pathlib import Path

from pixbench.config import Params, Paths
from pixbench.paper import LOCALITY_NOTE, PAPER, RECIPE_NOTE, SUPERVISED
from pixbench.runio import atomic_write_bytes

FIG_DIR = "figures"


def collect_runs(runs_dir: Path) -> list[dict]:
    """metrics.json (+ curve.json, manifest.json) of every finished classification run."""
    rows = []
    for path in sorted(runs_dir.glob("classify-*/metrics.json")):
        m = json.loads(path.read_text())
        curve = path.with_name("curve.json")
        m["_curve"] = json.loads(curve.read_text()) if curve.exists() else []
        man = path.with_name("manifest.json")
        m["_manifest"] = json.loads(man.read_text()) if man.exists() else {}
        rows.append(m)
    return rows


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None when n < 2)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt_ms(values: list[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def aggregate(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Group baseline runs (no locality variant) by (dataset, image size, model size, patch);
    seeds are the replicates."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("variant") is None:
            groups[(r["dataset"], r["image_size"], r["size"], r["patch"])].append(r)
    return dict(sorted(groups.items()))


def locality_table(rows: list[dict]) -> list[str]:
    """Top-1 per patch size: the baseline beside every locality variant that has runs."""
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    variants = sorted({r["variant"] for r in rows if r.get("variant")})
    if not variants:
        return []
    for r in rows:
        cells[(r["size"], r["patch"])][r.get("variant") or "baseline"].append(r["top1"])
    head = ["model", "patch", "baseline (learned pos, no permutation)"] + variants
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (size, patch), by_variant in sorted(cells.items()):
        vals = [fmt_ms(by_variant[v]) + f" (n={len(by_variant[v])})" if by_variant.get(v) else "–"
                for v in ["baseline"] + variants]
        lines.append(f"| ViT-{size.upper()}/{patch} | {patch} | " + " | ".join(vals) + " |")
    return lines


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def plot_accuracy(groups: dict[tuple, list[dict]], out_dir: Path, stem: str) -> list[str]:
    """Top-1 vs patch size and top-1 vs train GFLOPs per image (mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_size: dict[str, list[tuple]] = defaultdict(list)
    for (_, _, size, patch), runs in groups.items():
        mean, std = mean_std([r["top1"] for r in runs])
        by_size[size].append((patch, runs[0]["gflops_train"], mean, std or 0.0))
    names = []
    for kind, xlabel in (("patch", "patch size (1 = pixel tokens)"),
                         ("gflops", "train GFLOPs per image (analytic, log scale)")):
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for size, pts in sorted(by_size.items()):
            pts.sort()
            xs = [p[0] if kind == "patch" else p[1] for p in pts]
            ax.errorbar(xs, [p[2] for p in pts], yerr=[p[3] for p in pts], marker="o",
                        capsize=3, label=f"ViT-{size.upper()}")
            if kind == "gflops":
                for p in pts:
                    ax.annotate(f"/{p[0]}", (p[1], p[2]), textcoords="offset points", xytext=(4, 4),
                                fontsize=8)
        ax.set_xscale("log", base=2 if kind == "patch" else 10)
        if kind == "patch":
            ax.set_xticks([p[0] for p in sorted(next(iter(by_size.values())))])
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        name = f"{stem}_top1_vs_{kind}.png"
        _savefig(fig, out_dir / name)
        plt.close(fig)
        names.append(name)
    return names


def plot_curves(groups: dict[tuple, list[dict]], out_dir: Path, stem: str) -> str:
    """Learning curves: val top-1 on a fixed val subset during training, per patch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    cmap = plt.get_cmap("viridis")
    keys = list(groups)
    for i, key in enumerate(keys):
        color = cmap(i / max(1, len(keys) - 1))
        for j, r in enumerate(groups[key]):
            c = r["_curve"]
            if not c:
                continue
            ax.plot([e["epoch"] for e in c], [e["val_top1_subset"] for e in c],
                    color=color, lw=2.2 if key[3] == 1 else 1.2, alpha=0.9,
                    label=r["display"] if j == 0 else None, marker="o", ms=3)
    chance = 100.0 / groups[keys[0]][0].get("num_classes", 10) if keys else 10.0
    ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 on a fixed 1000-image subset (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    name = f"{stem}_learning_curves.png"
    _savefig(fig, out_dir / name)
    plt.close(fig)
    return name


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def classify_table(groups: dict[tuple, list[dict]]) -> list[str]:
    head = ("| model | patch | tokens | params | train GFLOPs/img | infer GFLOPs/img | "
            "train img/s | infer img/s | peak RSS MB | step mem MB | top-1 % | top-5 % | n | train s/run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (_, _, size, patch), runs in groups.items():
        r0 = runs[0]

        def avg(key: str) -> float | None:
            vals = [r[key] for r in runs if r.get(key) is not None]
            return statistics.fmean(vals) if vals else None

        lines.append(
            f"| {r0['display']} | {patch} | {r0['tokens']} | {r0['params']:,} | "
            f"{r0['gflops_train']:.4g} | {r0['gflops_infer']:.4g} | {_fmt(avg('train_img_per_s'), 0)} | "
            f"{_fmt(avg('infer_img_per_s'), 0)} | {_fmt(avg('peak_mem_mb'), 0)} | "
            f"{_fmt(avg('step_mem_mb'), 0)} | "
            f"{fmt_ms([r['top1'] for r in runs])} | {fmt_ms([r['top5'] for r in runs])} | "
            f"{len(runs)} | {_fmt(avg('train_s'), 0)} |")
    return lines


def paper_table() -> list[str]:
    lines = ["| dataset | model | ViT/2 top-1 % | pixels top-1 % | source |", "|---|---|---|---|---|"]
    for ds, model, vit2, pix, label, note in SUPERVISED:
        lines.append(f"| {ds} | {model} | {vit2} | {pix} | [{label}]{' ' + note if note else ''} |")
    return lines


def environment(rows: list[dict]) -> list[str]:
    seen = sorted({(r["_manifest"].get("cpu", "?"), r["_manifest"].get("gpu", ""),
                    r["device"], r["_manifest"].get("versions", {}).get("torch", "?"),
                    r["_manifest"].get("versions", {}).get("timm", "?"),
                    str(r["_manifest"].get("torch_threads", "?"))) for r in rows})
    return [f"- {cpu}{' / ' + gpu if gpu else ''}, device {dev}, torch {t}, timm {tm}, "
            f"{th} threads" for cpu, gpu, dev, t, tm, th in seen]


def recipe_summary(params: Params) -> list[str]:
    prof = params.active
    c, d = prof.classify, prof.data
    return [f"- Profile `{params.profile}`: {d.source} at {d.image_size}x{d.image_size}, "
            f"train subset {c.train_subset or 'all'}, val {c.val_subset or 'all'} images; "
            f"{c.epochs} epochs, batch {c.batch_size}, AdamW lr {c.optim.lr:g} (per "
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


def classify_section(params: Params, rows: list[dict], out_dir: Path) -> list[str]:
    lines = ["## Classification", ""] + recipe_summary(params) + [""]
    if not rows:
        lines += [f"No finished runs for profile {params.profile}.", ""]
    by_dataset: dict[tuple, dict] = defaultdict(dict)
    for key, runs in aggregate(rows).items():
        by_dataset[key[:2]][key] = runs
    for (dataset, image_size), sub in by_dataset.items():
        stem = f"classify_{params.profile}_{dataset}{image_size}"
        lines += [f"### {dataset} {image_size}x{image_size}", ""] + classify_table(sub) + [""]
        figs = plot_accuracy(sub, out_dir / FIG_DIR, stem) + [plot_curves(sub, out_dir / FIG_DIR, stem)]
        lines += [f"![{f}]({FIG_DIR}/{f})" for f in figs] + [""]
    return lines + [CLASSIFY_NOTE, "", "### The paper's numbers", ""] + paper_table() + [
        "", RECIPE_NOTE, "Our default is a CPU-minutes proxy, not the paper's recipe: compare "
        "trends, not absolute values.", ""]


def build_report(params: Params, paths: Paths) -> Path:
    out_dir = paths.reports_dir
    rows = collect_runs(paths.runs_dir / params.profile)
    lines = ["# pixbench report", "",
             "What does it cost, and what does it buy, to make every pixel a token instead of "
             f"every patch? ({PAPER})", ""]
    lines += classify_section(params, rows, out_dir)
    loc = locality_table(rows)
    if loc:
        lines += ["## Locality", "", LOCALITY_INTRO, ""] + loc + ["", LOCALITY_NOTE, ""]
    lines += ["## Environment", ""] + environment(rows) + [""]
    path = out_dir / "REPORT.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
