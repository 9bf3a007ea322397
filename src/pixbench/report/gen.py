"""Report sections of the generation track: the tokenizer (reconstruction grid, PSNR, codebook
usage) and DiT samples scored by FID/IS/KID/precision-recall per latent patch size, with
compute, sample grids, FID vs training step, the sanity scale and the paper's numbers."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from pixbench.config import Params
from pixbench.errors import UserError
from pixbench.eval.stats import mean_std
from pixbench.report.dataset import not_about, paper_dataset
from pixbench.report.plots import fig_path
from pixbench.runio import load_arrays, read_json

PAPER_GEN = ("Paper [S]: DiT-style models on 32x32 VQGAN latents of 256x256 ImageNet — PiT-L "
             "(pixel tokens, 1024) FID **4.05** vs DiT-L/2 (256 tokens) **4.16**; better on 3 of "
             "5 metrics, tie on 2; steps, guidance and sample count not published [U]. Compare "
             "directions, not values, unless this profile runs the paper's setting; FeatNet "
             "FIDs are not Inception FIDs.")


def _load(path: Path) -> dict | None:
    return read_json(path, "metrics") if path.exists() else None


def _images(path: Path, keys: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays of an .npz a task wrote (samples.npz, reconstructions.npz): read without
    pickles (an object array is refused, naming the file) and checked to hold uint8 images
    (N, C, H, W), so a tampered file is one line, not a traceback in the plotting."""
    arrays = load_arrays(path, "image arrays")
    got = [arrays.get(k) for k in keys]
    if any(a is None for a in got) or got[0].dtype != np.uint8 or got[0].ndim != 4:
        raise UserError(f"{path}: expected uint8 image arrays {', '.join(keys)}")
    return got[0], got[1]


def _check(params: Params, path: Path, m: dict, expect: str) -> None:
    if m.get("spec_digest") != expect:
        raise UserError(f"{path.parent}: refused, made with other settings than params.yaml; "
                        "re-run it (dvc repro) or remove it")


def tokenizer_section(params: Params, runs: Path, fig_dir: Path, rel: str) -> list[str]:
    from pixbench.config import make_vq_eval_spec, make_vq_spec
    from pixbench.report.images import interleave, save_grid

    vq_spec, ev_spec = make_vq_spec(params), make_vq_eval_spec(params)
    train = _load(runs / vq_spec.run_id / "metrics.json")
    ev = _load(runs / ev_spec.run_id / "metrics.json")
    if train is None or ev is None:
        return []
    _check(params, runs / ev_spec.run_id / "metrics.json", ev, ev_spec.digest())
    _check(params, runs / vq_spec.run_id / "metrics.json", train, vq_spec.digest())
    cfg = vq_spec.vq
    orig, recon = _images(runs / ev_spec.run_id / "reconstructions.npz",
                          ("original", "reconstruction"))
    name = f"gen_{params.profile}_tokenizer_reconstructions.png"
    save_grid(interleave(orig[:16], recon[:16], 8),
              fig_path(fig_dir, name), ncol=8, zoom=3)
    side = vq_spec.data.image_size // cfg.downsample
    source = "imported (" + cfg.pretrained.path + ")" if cfg.pretrained else (
        f"trained {train['steps']} steps x batch {cfg.batch_size} in {train['train_s']:.0f} s "
        f"({train['device']})")
    return [
        "### Tokenizer (VQGAN)", "",
        f"- {vq_spec.data.image_size}x{vq_spec.data.image_size} images -> {side}x{side}x"
        f"{cfg.latent_channels} latents (f={cfg.downsample}), {cfg.codebook_size} codes; "
        f"{source}; {train['params'] / 1e6:.2f} M params, {train['code_restarts']} dead-code "
        "restarts.", "",
        "| val images | PSNR (dB) | L1 ([-1,1]) | codes used | usage | perplexity | rFID (FeatNet) |",
        "|---|---|---|---|---|---|---|",
        f"| {ev['val_n']} | {ev['psnr']:.2f} ± {ev['psnr_std']:.2f} | {ev['l1']:.4f} | "
        f"{ev['codes_used']}/{ev['codebook_size']} | {ev['codebook_usage']:.1%} | "
        f"{ev['perplexity']:.1f} | {ev['rfid_featnet']:.3f} |", "",
        f"![{name}]({rel}/{name})", "",
        "Rows alternate validation originals and their reconstructions (fixed images).", ""]


def collect_dit(params: Params, runs: Path) -> list[dict]:
    from pixbench.config import make_dit_eval_spec

    rows = []
    sw = params.gen_sweep
    for size in sw.sizes:
        for patch in sw.patches:
            for seed in sw.seeds:
                spec = make_dit_eval_spec(params, size=size, patch=patch, seed=seed)
                path = runs / spec.run_id / "metrics.json"
                m = _load(path)
                if m is None:
                    continue
                _check(params, path, m, spec.digest())
                m["_dir"], m["_train_dir"] = path.parent, runs / spec.dit["run_id"]
                rows.append(m)
    return rows


METRICS = [("fid_featnet", "FID ↓"), ("isc_featnet_mean", "IS ↑"), ("kid_featnet_mean", "KID ↓"),
           ("precision_featnet", "precision ↑"), ("recall_featnet", "recall ↑")]


def dit_table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["size"], r["patch"])].append(r)
    inc = any("fid_inception" in r for r in rows)
    head = ["model", "tokens", "n"] + [h for _, h in METRICS] + (["FID (Inception)"] if inc else [])
    head += ["GFLOPs/step", "train s", "sample img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (size, patch), g in sorted(groups.items()):
        cells = [g[0]["display"], str(g[0]["tokens"]), str(len(g))]
        for key, _ in METRICS + ([("fid_inception", "")] if inc else []):
            vals = [r[key] for r in g if key in r]
            m, s = mean_std(vals) if vals else (float("nan"), float("nan"))
            cells.append(f"{m:.3f}" + (f" ± {s:.3f}" if len(vals) > 1 else ""))
        cells += [f"{g[0]['gflops_per_step']:.4f}", f"{np.mean([r['train_s'] for r in g]):.0f}",
                  f"{np.mean([r['sample_img_per_s'] for r in g]):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sanity_lines(params: Params, runs: Path, rows: list[dict]) -> list[str]:
    from pixbench.config import make_vq_eval_spec

    ev = _load(runs / make_vq_eval_spec(params).run_id / "metrics.json")
    if ev is None or not rows:
        return []
    best = min(r["fid_featnet"] for r in rows)
    return ["Sanity scale (FeatNet FID against the same reference, same n):", "",
            "| real val images | best DiT samples | uniform noise |", "|---|---|---|",
            f"| {ev['fid_featnet_real_val']:.3f} | {best:.3f} | {ev['fid_featnet_noise']:.1f} |",
            ""]


def sample_grids(rows: list[dict], fig_dir: Path, rel: str, profile: str) -> list[str]:
    """One grid per patch size (first seed): 4 samples of each class, a class per column."""
    from pixbench.report.images import save_grid

    lines = []
    seed0 = min(r["seed"] for r in rows)
    for r in sorted((r for r in rows if r["seed"] == seed0), key=lambda r: (r["size"], r["patch"])):
        images, labels = _images(r["_dir"] / "samples.npz", ("images", "labels"))
        k = int(labels.max()) + 1
        picks = [np.flatnonzero(labels == c)[:4] for c in range(k)]
        grid = np.stack([images[p[i]] for i in range(4) for p in picks])  # row i: class 0..k-1
        name = f"gen_{profile}_samples_{r['size']}_p{r['patch']}.png"
        save_grid(grid, fig_path(fig_dir, name), ncol=k, zoom=2)
        lines.append(f"![{name}]({rel}/{name})")
    return lines + ["", "Sample grids (EMA weights, the metrics' sampler and guidance): one "
                    "class per column, first samples drawn, not picked.", ""]


def plot_fid_curve(rows: list[dict], fig_dir: Path, profile: str) -> str | None:
    from pixbench.report.plots import _plt, finish_axes

    curves = []
    for r in rows:
        curve = _load(r["_train_dir"] / "curve.json") or []
        pts = [(c["step"], c["fid_featnet"]) for c in curve if "fid_featnet" in c]
        if pts:
            curves.append((r["display"] + f" s{r['seed']}", pts))
    if not curves:
        return None
    _, plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, pts in sorted(curves):
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_yscale("log")
    return finish_axes(fig, ax, xlabel="training step", ylabel="FID (FeatNet, probe samples)",
                       out_dir=fig_dir, name=f"gen_{profile}_fid_vs_step.png")


def gen_section(params: Params, runs: Path, out_dir: Path, rel: str) -> list[str]:
    if params.active.gen is None or params.gen_sweep is None:
        return []
    fig_dir = out_dir / rel  # made by the first figure written (nothing when refused before)
    lines = tokenizer_section(params, runs, fig_dir, rel)
    rows = collect_dit(params, runs)
    if not lines and not rows:
        return []
    gen = params.active.gen
    head = ["## Generation (DiT on VQGAN latents)", ""]
    if rows:
        s, d = gen.sample, gen.dit
        lines += ["### DiT: pixel tokens vs patches", "",
                  f"- Each cell: {d.steps} steps x batch {d.batch_size}, pos-embed `{d.pos_embed}`, "
                  f"EMA {d.ema_decay}; {s.num_samples} samples, {s.sampler.upper()} {s.steps} "
                  f"steps, guidance {s.cfg_scale:g}; reference: {gen.fid.reference_images or 'all'} "
                  f"{gen.fid.reference} images. GFLOPs per denoising step and image (analytic, "
                  "no guidance); sample img/s measured (guidance doubles the batch).", ""]
        lines += dit_table(rows) + ["", "At a CPU budget of a few hundred steps the models are "
                                    "far from converged (FID still falling in the curve below): "
                                    "the ranking is of equal-budget, undertrained models.", ""]
        lines += sanity_lines(params, runs, rows)
        lines += sample_grids(rows, fig_dir, rel, params.profile)
        name = plot_fid_curve(rows, fig_dir, params.profile)
        if name:
            lines += [f"![{name}]({rel}/{name})", "", "FID vs training step: "
                      f"{d.curve_samples} EMA samples per point (biased upwards by the small n; "
                      "compare points, not with the table).", ""]
    if paper_dataset(gen.data) != "ImageNet":
        return head + lines + not_about("generation", gen.data, "ImageNet 256x256 latents")
    return head + lines + ["### The paper's generation numbers", "", PAPER_GEN, ""]
