"""Report tables: Markdown strings from grouped runs; every number comes from a metrics file."""

from __future__ import annotations

import statistics
from collections import defaultdict

from pixbench.eval.plateau import DROP, interval_losses, plateau
from pixbench.eval.stats import fmt_ms
from pixbench.paper import SUPERVISED


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


def paper_table(dataset: str) -> list[str]:
    """The paper's supervised rows on `dataset` ("CIFAR-100", "ImageNet")."""
    lines = ["| dataset | model | ViT/2 top-1 % | pixels top-1 % | source |", "|---|---|---|---|---|"]
    for ds, model, vit2, pix, label, note in SUPERVISED:
        if not ds.startswith(dataset + " "):
            continue
        lines.append(f"| {ds} | {model} | {vit2} | {pix} | [{label}]{' ' + note if note else ''} |")
    return lines


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


THRESHOLDS = (50.0, 70.0)


def _first_reach(curve: list[dict], threshold: float) -> dict | None:
    return next((c for c in curve if c["val_top1_subset"] >= threshold), None)


def cost_to_accuracy_table(groups: dict[tuple, list[dict]]) -> list[str]:
    """Quality at equal compute, read the other way: the train GFLOPs (analytic, per image x
    images seen) and measured seconds each patch size needed to first reach a top-1 level."""
    head = "| model | " + " | ".join(f"GFLOPs to {t:g}% | s to {t:g}%" for t in THRESHOLDS) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(THRESHOLDS))]
    for (_, _, size, patch), runs in groups.items():
        cells = []
        for t in THRESHOLDS:
            hits = [(_first_reach(r["_curve"], t), r) for r in runs]
            if not hits or any(h is None for h, _ in hits):
                cells += ["–", "–"]
                continue
            gflops = statistics.fmean(h["images_seen"] * r["gflops_train"] for h, r in hits)
            secs = statistics.fmean(h["train_time_s"] for h, _ in hits)
            cells += [f"{gflops:,.0f}", f"{secs:,.1f}"]
        lines.append(f"| {runs[0]['display']} | " + " | ".join(cells) + " |")
    return lines


PLATEAU_NOTE = ("Plateau: the lowest window-mean train loss early in the run (first quarter of "
                f"its steps, at least two curve points); escape: the first curve point whose "
                f"window-mean train loss is {DROP:.0%} below it; never: the seed stayed on its "
                "plateau to the end (src/pixbench/eval/plateau.py). It tells a stalled seed "
                "(never, or late) from the others; for a model without a plateau it only marks "
                "when its loss first fell that far below its early level.")


def plateau_table(groups: dict[tuple, list[dict]]) -> list[str]:
    """One row per seed: final top-1, plateau level and escape step of its train loss, so a
    seed that stalled is visible beside the mean."""
    lines = ["| model | seed | top-1 % | plateau train loss | escape step | steps |",
             "|---|---|---|---|---|---|"]
    for runs in groups.values():
        for r in sorted(runs, key=lambda r: r["seed"]):
            p = plateau(interval_losses(r["_curve"]))
            level = "–" if p.level is None else f"{p.level:.3f}"
            escape = "–" if p.level is None else (
                "never" if p.escape_step is None else str(p.escape_step))
            lines.append(f"| {r['display']} | {r['seed']} | {r['top1']:.2f} | {level} | "
                         f"{escape} | {r.get('steps', '–')} |")
    return lines
