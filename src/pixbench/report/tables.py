"""Report tables: Markdown strings from grouped runs; every number comes from a metrics file."""

from __future__ import annotations

import statistics
from collections import defaultdict

from pixbench.eval.plateau import DROP, MIN_VERDICT_POINTS, interval_losses, plateau
from pixbench.eval.stats import fmt_ms
from pixbench.paper import SUPERVISED
from pixbench.verify.conclusions import CHANCE_SE, cell_gate, run_gate


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def classify_table(groups: dict[tuple, list[dict]]) -> list[str]:
    """The cost and accuracy table of one dataset, then its chance level and the cells that
    enter no test or ranking (the validity gate, verify/conclusions.py). Top-5 is left out when
    there are 5 classes or fewer: it is 100 % by construction, not a result."""
    classes = {r.get("num_classes") for runs in groups.values() for r in runs}
    k = next(iter(classes)) if len(classes) == 1 else None
    top5 = not (isinstance(k, int) and k <= 5)
    head = ("| model | patch | tokens | params | train GFLOPs/img | infer GFLOPs/img | "
            "train img/s | infer img/s | peak RSS MB | step mem MB | top-1 % | "
            + ("top-5 % | " if top5 else "") + "n | train s/run |")
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
            f"{_fmt(avg('step_mem_mb'), 0)} | {fmt_ms([r['top1'] for r in runs])} | "
            + (f"{fmt_ms([r['top5'] for r in runs])} | " if top5 else "")
            + f"{len(runs)} | {_fmt(avg('train_s'), 0)} |")
    return lines + chance_lines(k) + gate_lines(
        {runs[0]["display"]: runs for runs in groups.values()})


def chance_lines(k: int | None) -> list[str]:
    """The chance level beside a top-1 table: what "at chance" in the gate means."""
    if not isinstance(k, int) or k < 2:
        return []
    out = ["", f"Chance: 1/{k} classes = {100 / k:.1f} % top-1. A cell half or more of whose "
           f"seeds are within {CHANCE_SE:g} binomial standard errors of it (at the val size) "
           "learned nothing measurable and enters no test or ranking."]
    if k <= 5:
        out[-1] += (f" Top-5 is not shown: with {k} classes it is trivially 100 % (top-k with "
                    "k ≥ classes measures nothing).")
    return out


def gate_lines(cells: dict[str, list[dict]]) -> list[str]:
    """One line per cell that fails the validity gate (verify/conclusions.cell_gate), with the
    reason: the report prints no Δ, p-value or ranking for it."""
    out = [f"- {name}: no test or ranking: {why}." for name, runs in cells.items()
           if (why := cell_gate(runs))]
    return ["", "Cells that did not learn measurably (validity gate, see Conclusions):", ""] + \
        out if out else []


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
    by_cell: dict[str, list[dict]] = defaultdict(list)
    for r in sorted((r for r in rows if r.get("variant")),  # baselines: the classify table
                    key=lambda r: (r["size"], r["patch"], r["variant"])):
        by_cell[f"ViT-{r['size'].upper()}/{r['patch']} {r['variant']}"].append(r)
    return lines + gate_lines(by_cell)


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
                f"plateau to the end, said only from {MIN_VERDICT_POINTS} curve points on "
                "(src/pixbench/eval/plateau.py); too few curve points (n): a shorter curve with "
                "no escape, no verdict (its early window is most of the run; a single point is "
                "no curve, and such a seed is judged on its top-1 alone); no stall: the "
                "loss never fell that far below its early level but top-1 is far above chance "
                "(at least half-way to 100 %), so the seed learned inside that early window. It "
                "tells a stalled seed (never, or late) from the others; for a model without a "
                "plateau it only marks when its loss first fell that far below its early level.")


def plateau_table(groups: dict[tuple, list[dict]]) -> list[str]:
    """One row per seed: final top-1, plateau level and escape step of its train loss, so a
    seed that stalled is visible beside the mean. The verdict is the validity gate's
    (verify/conclusions.run_gate), so the table and the Conclusions say the same."""
    lines = ["| model | seed | top-1 % | plateau train loss | escape step | steps |",
             "|---|---|---|---|---|---|"]
    for runs in groups.values():
        for r in sorted(runs, key=lambda r: r["seed"]):
            curve = r.get("_curve") or []
            p = plateau(interval_losses(curve))
            verdict = run_gate(r, curve).get("plateau") or ("short" if p.points else None)
            escape = {None: "–", "never": "never", "learned": "no stall (top-1 far above chance)",
                      "short": f"too few curve points ({p.points})",
                      "escaped": str(p.escape_step)}[verdict]
            level = "–" if p.level is None else f"{p.level:.3f}"
            lines.append(f"| {r['display']} | {r['seed']} | {r['top1']:.2f} | {level} | "
                         f"{escape} | {r.get('steps', '–')} |")
    return lines
