"""Report figures (matplotlib, Agg): deterministic PNGs with no timestamp metadata."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

from pixbench.eval.stats import mean_std
from pixbench.runio import atomic_write_bytes, load_arrays


def _plt():
    """matplotlib with the Agg backend, imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return matplotlib, plt


def fig_path(out_dir: Path, name: str) -> Path:
    """out_dir/name for a figure whose name is built from params and metrics values (profile,
    dataset, size): a safe file name, and the path stays below out_dir."""
    from pixbench.names import check_name
    from pixbench.runio import under_root

    path = Path(out_dir) / check_name(name, "report figure")
    under_root(path, out_dir)
    return path


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def finish_axes(fig, ax, *, xlabel: str, ylabel: str, out_dir: Path, name: str,
                log_x: bool = False) -> str:
    """Labels, grid, legend, then a deterministic PNG; returns the file name."""
    _, plt = _plt()
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, fig_path(out_dir, name))
    plt.close(fig)
    return name


def plot_accuracy(groups: dict[tuple, list[dict]], out_dir: Path, stem: str) -> list[str]:
    """Top-1 vs patch size and top-1 vs train GFLOPs per image (mean ± std over seeds)."""
    matplotlib, plt = _plt()
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
        _savefig(fig, fig_path(out_dir, name))
        plt.close(fig)
        names.append(name)
    return names


def plot_curves(groups: dict[tuple, list[dict]], out_dir: Path, stem: str) -> str:
    """Learning curves: val top-1 on a fixed val subset during training, per patch size."""
    matplotlib, plt = _plt()
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
    return finish_axes(fig, ax, xlabel="epoch", ylabel="val top-1 on a fixed 1000-image subset (%)",
                       out_dir=out_dir, name=f"{stem}_learning_curves.png")


def plot_time(groups: dict[tuple, list[dict]], out_dir: Path, stem: str) -> str:
    """Compute vs quality in wall time: top-1 against measured training seconds per run, every
    seed a point; the Pareto front (no other run both faster and better) is drawn."""
    _, plt = _plt()
    pts = sorted((r["train_s"], r["top1"], key[3]) for key, runs in groups.items() for r in runs)
    front, best = [], float("-inf")
    for t, acc, _ in pts:
        if acc > best:
            front.append((t, acc))
            best = acc
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    cmap = plt.get_cmap("viridis")
    patches = sorted({p for _, _, p in pts})
    for i, patch in enumerate(patches):
        xs = [t for t, _, p in pts if p == patch]
        ys = [a for _, a, p in pts if p == patch]
        ax.scatter(xs, ys, color=cmap(i / max(1, len(patches) - 1)), label=f"p={patch}", zorder=3)
    ax.plot([f[0] for f in front], [f[1] for f in front], color="grey", ls="--", lw=1,
            label="Pareto front")
    return finish_axes(fig, ax, xlabel="measured training time per run (s, log scale)",
                       ylabel="val top-1 (%)", out_dir=out_dir,
                       name=f"{stem}_top1_vs_train_time.png", log_x=True)


def plot_reconstructions(items: list[tuple[str, Path]], out_dir: Path, stem: str,
                         images: int = 4) -> str:
    """A grid: one row per run (patch size), (masked, reconstruction, original) per image."""
    _, plt = _plt()
    fig, axes = plt.subplots(len(items), 3 * images, figsize=(1.0 * 3 * images, 1.15 * len(items)),
                             squeeze=False)
    for row, (label, path) in enumerate(items):
        rec = load_arrays(path, "reconstructions")  # no pickles: an object array is refused
        for i in range(images):
            for j, kind in enumerate(("masked", "reconstruction", "original")):
                ax = axes[row][3 * i + j]
                img = rec[kind][i]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    titles = {"masked": "masked", "reconstruction": "recon.", "original": "orig."}
                    ax.set_title(titles[kind], fontsize=7)
        axes[row][0].set_ylabel(label, fontsize=8)
    name = f"{stem}_reconstructions.png"
    _savefig(fig, fig_path(out_dir, name))
    plt.close(fig)
    return name
