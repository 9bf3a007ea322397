"""Write a run: reports/bench/<env>.json (every record, derived figure and target), <env>.md
(the targets beside the figures, then the tables) and the plots <env>_scaling.png and
<env>_throughput.png. Every file is written to a temp file and renamed; floats are rounded to
4 significant digits and keys sorted, so equal results give equal files.
"""

from __future__ import annotations

from pathlib import Path

from pixbench.runio import atomic_write_bytes, atomic_write_json

SCHEMA = "pixbench.bench/1"  # the format of reports/bench/*.json: its name, not a module


def rounded(obj):
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    return obj


def write_all(doc: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    stem = doc["env_name"] + ("" if doc["complete"] else "-partial")
    doc = rounded({**doc, "files": {"summary": f"{stem}.md", "plots": [
        f"{stem}_scaling.png", f"{stem}_throughput.png"]}})
    from benchsuite.plots import plot_scaling, plot_throughput

    plot_scaling(doc, out_dir / f"{stem}_scaling.png")
    plot_throughput(doc, out_dir / f"{stem}_throughput.png")
    atomic_write_bytes(out_dir / f"{stem}.md", summary_markdown(doc).encode())
    path = out_dir / f"{stem}.json"
    atomic_write_json(path, doc)
    return path


def _n(x, spec: str = ",.1f", none: str = "—") -> str:
    return none if x is None else format(x, spec)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]


def _env_lines(doc: dict) -> list[str]:
    e = doc["environment"]
    where = e.get("gpu") or e.get("cpu")
    return [f"- profile `{doc['profile']}`, device {doc['device']} ({where}), ISA "
            f"{e.get('cpu_isa')}, {e.get('torch_threads')} torch thread(s) of "
            f"{e.get('cpu_count')} CPUs ({e.get('threads_reason')})",
            f"- torch {e['versions']['torch']}, timm {e['versions']['timm']}, git "
            f"{(e.get('git_sha') or '?')[:10]}{' (dirty)' if e.get('git_dirty') else ''}",
            f"- load average at start {e.get('load_average_start')}, at end "
            f"{e.get('load_average_end')}; measured in {doc['duration_s']:.0f} s; "
            + ("all cases of the profile ran" if doc["complete"] else "**partial run**")]


VIT_WORKLOADS = ("vit_train", "vit_infer", "data_loading")
GEN_WORKLOADS = ("mae_encoder", "dit_train", "dit_infer", "tokenizer_encode", "fid_features")


def _throughput_rows(doc: dict, workloads: tuple[str, ...] = VIT_WORKLOADS) -> list[list[str]]:
    rows = []
    for r in doc["results"]:
        if r["workload"] not in workloads:
            continue
        if r["status"] != "ok":
            rows.append([r["id"], "—", "—", r["status"], "—", "—", "—", "—",
                         (r.get("reason") or r.get("error") or "")[:90]])
            continue
        rows.append([r["id"], _n(r.get("tokens"), "d"), _n(r["items_per_step"], "d"),
                     _n(r["items_per_s"]), _n(r.get("flops_per_s") and r["flops_per_s"] / 1e9),
                     _pct(r.get("mfu")), _pct(r.get("mfu_local")), _n(r.get("mem_workload_mb"),
                                                                      ",.0f"),
                     f"compile {r['compile_s']:.0f} s" if "compile_s" in r else ""])
    return rows


def _scaling_lines(s: dict | None) -> list[str]:
    if not s:
        return ["No scaling cases in this run."]
    rows = [[str(p), str(t), _n(st, ".4f"), _n(m, ",.1f")] for p, t, st, m in
            zip(s["patches"], s["tokens"], s["step_s"], s["mem_workload_mb"])]
    out = [f"ViT-{s['model']} on {s['image_size']}x{s['image_size']}, batch {s['batch']}, "
           f"{s['dtype']}, train step; memory = {s['mem_kind']} peak − baseline.", ""]
    out += _table(["patch", "tokens", "step s", "memory MB"], rows) + [""]
    for what, key in (("time", "time_fit"), ("memory", "mem_fit")):
        a, t = s.get(key), s.get(key + "_tail")
        out.append(f"- {what} ∝ tokens^k: k = {_n(a and a['exponent'], '.2f')} over all points, "
                   f"{_n(t and t['exponent'], '.2f')} for tokens ≥ {s['tail_from_tokens']}")
    return out


def _cost_lines(c: dict) -> list[str]:
    rows = [[r["table"], f"ViT-{r['size'].upper()}/{r['patch']}", str(r["tokens"]),
             f"{r['epochs']:,}", f"{r['images']:,}", r["method"] + (
                 f" (MFU {_pct(r['mfu'])} of {r['source']})" if r["method"] == "analytic"
                 else f" ({r.get('source', '')})"), _n(r.get("items_per_s")),
             _n(r["hours"], ",.0f")] for r in c["rows"]]
    out = _table(["table", "model", "tokens", "epochs", "images", "from", "img/s",
                  c["unit"]], rows)
    out += [""] + [f"- {t}: {_n(h, ',.0f')} {c['unit']} in all" for t, h in c["totals"].items()]
    return out + [f"- {c['note']}; dtype {c['dtype']}."]


def summary_markdown(doc: dict) -> str:
    L = [f"# Compute benchmark: {doc['env_name']}", ""] + _env_lines(doc) + ["", "## Targets", ""]
    L += _table(["figure", "target", "measured", "status", "what limits it"],
                [[t["figure"], t["target"], t["measured"], f"**{t['status']}**", t["limits"]]
                 for t in doc["targets"]])
    L += ["", "## Matmul peak (same run)", ""]
    L += _table(["dtype", "n", "GFLOP/s (median)", "GFLOP/s (best)", "fast path"],
                [[k, str(p["n"]), _n(p["flops_per_s"] / 1e9), _n(p["flops_per_s_best"] / 1e9),
                  str(p["fast_path"])] for k, p in sorted(doc["peaks"].items())])
    L += ["", "## Throughput", "", "MFU = analytic FLOPs (attention counted) per second ÷ the "
          "run's matmul peak of the same dtype; *local* divides by a matmul re-measured just "
          "before the case (contention shows as a gap between the two).", ""]
    L += _table(["case", "tokens", "batch", "items/s", "GFLOP/s", "MFU", "MFU local",
                 "memory MB", "note"], _throughput_rows(doc))
    gen = _throughput_rows(doc, GEN_WORKLOADS)
    if gen:
        L += ["", "## MAE, DiT, tokenizer and FID features", "",
              "MAE: one pre-training step (mask 0.75; tokens = all, the encoder sees a quarter). "
              "DiT: `dit_train` one training step, `dit_infer` one denoising forward with "
              "classifier-free guidance (the batch runs doubled; items = images). Tokenizer: VQ "
              "encode + quantise. FID: FeatNet features and logits of uint8 images. FLOPs: "
              "analytic for MAE and DiT, counted by torch.utils.flop_counter for the tokenizer "
              "and FeatNet.", ""]
        L += _table(["case", "tokens", "batch", "items/s", "GFLOP/s", "MFU", "MFU local",
                     "memory MB", "note"], gen)
    bd = doc["derived"].get("breakdown")
    if bd:
        L += ["", "## Where the step time goes", "", f"`{bd['id']}`: " + ", ".join(
            f"{k} {_pct(v)}" for k, v in bd["share"].items()) + (
            f"; matmuls alone at {_pct(bd['matmul_fraction_of_peak'])} of peak"
            if "matmul_fraction_of_peak" in bd else "") + ". Largest other ops: " + ", ".join(
            f"{o['op']} {_pct(o['share'])}" for o in bd["top_other"]) + "."]
    L += ["", "## Token scaling", ""] + _scaling_lines(doc["derived"].get("scaling"))
    L += ["", "## Cost to reproduce the paper's tables", ""] + _cost_lines(doc["cost_estimate"])
    L += ["", "## Not measured yet", ""] + ([f"- `{k}`: {v}" for k, v in
                                             sorted(doc["pending_workloads"].items())]
                                            or ["Every workload of the issue is registered."])
    L += ["", "## Plots", ""] + [f"![{p}]({p})" for p in doc["files"]["plots"]]
    return "\n".join(L) + "\n"
