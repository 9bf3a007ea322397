"""The two plots of a run (matplotlib, Agg): token scaling and throughput vs patch size."""

from __future__ import annotations

import io
from pathlib import Path

from pixbench.runio import atomic_write_bytes

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def _ticks(ax, values: list) -> None:
    """Plain numbers (16, 64, ...) at the measured x values instead of 2^k."""
    if values:
        ax.set_xticks(values)
        ax.set_xticklabels([str(v) for v in values])
        ax.minorticks_off()


def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0))
    return plt, fig, axes


def plot_scaling(doc: dict, path: Path) -> None:
    s = doc["derived"].get("scaling")
    plt, fig, axes = _figure(2)
    for ax, key, fit, label in ((axes[0], "step_s", "time_fit", "time per step (s)"),
                                (axes[1], "mem_workload_mb", "mem_fit", "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per image")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if not s:
            ax.set_title("no scaling cases")
            continue
        pts = [(t, y) for t, y in zip(s["tokens"], s[key]) if y]
        _ticks(ax, [p[0] for p in pts])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[0], label="measured")
        for f, name, style in ((s.get(fit), "all", ":"), (s.get(fit + "_tail"), "tail", "--")):
            if f:
                xs = [p[0] for p in pts]
                ax.plot(xs, [f["coef"] * x ** f["exponent"] for x in xs], style, color="gray",
                        label=f"fit ({name}): k = {f['exponent']:.2f}")
        ax.legend(fontsize=8)
        ax.set_title(f"ViT-{s['model']} {s['image_size']}px, batch {s['batch']}, {s['dtype']}")
    fig.suptitle(doc["env_name"], fontsize=9)
    _save(fig, path)
    plt.close(fig)


def plot_throughput(doc: dict, path: Path) -> None:
    plt, fig, axes = _figure(2)
    for ax, wl in zip(axes, ("vit_train", "vit_infer")):
        lines: dict[tuple, list] = {}
        for r in doc["results"]:
            p = r["params"]
            if r["workload"] == wl and r["status"] == "ok" and r["group"] == "throughput":
                lines.setdefault((p["size"], p["image_size"], p["dtype"]), []).append(
                    (p["patch"], r["items_per_s"]))
        sizes = sorted({k[0] for k in lines})
        for (size, image, dtype), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if dtype == "fp32" else "s--",
                    color=COLORS[sizes.index(size) % len(COLORS)],
                    label=f"ViT-{size} {image}px {dtype}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _ticks(ax, sorted({p[0] for pts in lines.values() for p in pts}))
        ax.set_xlabel("patch size (1 = pixel tokens)")
        ax.set_ylabel("images / s")
        ax.set_title("train step" if wl == "vit_train" else "inference")
        ax.grid(True, which="both", alpha=0.3)
        if lines:
            ax.legend(fontsize=7)
    fig.suptitle(doc["env_name"], fontsize=9)
    _save(fig, path)
    plt.close(fig)
