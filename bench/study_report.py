"""study.md from study/study.json's figures (bench/study_measure.py writes both): the markdown
shows nothing the JSON lacks, so the two never disagree."""

from __future__ import annotations


def markdown(out: dict) -> str:
    local, paper = out["local"], out["paper"]
    lines = ["# The whole study as a DAG of SLURM jobs (`pixbench study`)", "",
             "Written by `bench/study_measure.py` (figures in study/study.json): the local "
             "cluster measured; ImageNet-1k estimated from analytic FLOPs and from the scale "
             "rehearsals' JSONs in reports/bench/, read when this is written (each figure "
             "names its file).", ""]
    lines += _headline(paper) + _local_lines(local) + _paper_lines(paper)
    lines += _memory_lines(paper) + _unmeasured_lines(paper)
    return "\n".join(lines)


def _headline(paper: dict) -> list[str]:
    rec, mem = paper["record"], {r["key"]: r for r in paper["memory"]}

    def fig(key: str) -> str:
        r = mem[key]
        return f"{r['now']} {r['unit']}" + ("" if r["before"] is None else
                                            f" (before {r['before']})")

    prep = ", ".join(f"{p['setting']} {p['wall_h']} h" for p in paper["prepare"])
    return [
        "## ImageNet-1k at a glance", "",
        f"- Wall: **{paper['dag_days']} days** as a DAG (`pixbench study submit`), "
        f"{paper['sequential_days']} days sequential (`dvc repro`), {paper['gpu_hours']} "
        f"GPU-hours: estimated at an assumed {paper['mfu']:.0%} MFU (not measured: see the "
        "last section).",
        f"- Prepare, each on {paper['prepare'][0]['node']}: {prep} (extrapolated from the "
        f"rehearsal's measured CPU per image, scale-prepare.json), "
        f"{paper['prepare_core_hours']} CPU core-hours in all.",
        f"- Recording the study in DVC: {rec['now_s']} s now ({len(rec['outs'])} identity "
        f"files, dvc-record.json); with the DVC-cached outs before, at least {rec['before_h']} h "
        f"more at the end of the critical path and {rec['before_copy_gib']} GiB more disk.",
        f"- Memory per node: a prepare on {paper['prepare'][0]['node']} {fig('prepare-28')} "
        "at 28px, "
        f"{fig('prepare-256')} at 256px; DiT's growth with N per node {fig('dit-train-node')} "
        f"in train, {fig('dit-eval-node')} in eval; the submitting process's plan "
        f"{fig('plan')}. Details and sources below.", ""]


def _local_lines(local: dict | None) -> list[str]:
    if not local:
        return ["## Local SLURM cluster", "", "Not measured (run without --skip-local).", ""]
    kept = (" Kept from an earlier run of this script (`--skip-local` re-estimates only the "
            "paper scale): measured on the code of that run." if local.get(
                "kept_from_earlier_run") else "")
    return ["## Local SLURM cluster (measured, one run each; shared 2-core CPU)", "",
            f"Tiny every-track study, {local['cells_tiny_study']} cells, "
            f"{local['slots']} job slots (= cores).{kept}", "",
            "| how | wall s |", "|---|---|",
            f"| `pixbench study submit` (DAG of jobs, blocking) | {local['dag_wall_s']} |",
            f"| sequential `dvc repro`, same cells, no SLURM | "
            f"{local['sequential_dvc_repro_s']} |", "",
            f"Ratio sequential / DAG: {local['speedup']}. Submission of 50 cells "
            f"(`--no-wait`, DVC graph + specs + sbatch): {local['submit_no_wait_s']} s "
            f"(`{local['submit_line']}`).", ""]


def _paper_lines(paper: dict) -> list[str]:
    rec = paper["record"]
    lines = ["## Paper scale (estimated: analytic FLOPs, the rehearsals' extrapolations)", "",
             f"{paper['cells']} cells; {paper['assumptions']}.", "",
             f"- sequential (`dvc repro`, one blocking job after another): "
             f"{paper['sequential_days']} days",
             f"- DAG (`pixbench study submit`, bounded by its critical path): "
             f"{paper['dag_days']} days",
             f"- GPU-hours: {paper['gpu_hours']}; prepare CPU core-hours: "
             f"{paper['prepare_core_hours']}",
             f"- critical path: {' -> '.join(paper['critical_path'])}", "",
             "Prepare cells: the profile's data settings, on the node its `prepare` job gets "
             "(scale-prepare.json derived.extrapolation, extrapolated from the rehearsal's "
             "measured CPU per image; the wall assumes decoding scales with cores and storage "
             "delivers the JPEGs in time, plus the merge's sha256 pass at the measured rate).",
             "", "| cell | setting | node | wall h | CPU core-h | cache GiB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p['cell']} | {p['setting']} | {p['node']} | {p['wall_h']} | {p['core_h']} | "
              f"{p['disk_gib']} |" for p in paper["prepare"]]
    lines += ["", "The record job (DVC's cost) runs once, after every cell: now each data "
              f"output is an identity file DVC hashes in seconds whatever the data's size "
              f"({rec['now_per_file_s']} s measured for one, dvc-record.json: "
              f"{rec['now_s']} s for {len(rec['outs'])}). "
              "Before, the caches and latents were DVC-cached outs: md5 + a copy into "
              f".dvc/cache at the measured {rec['s_per_gib']} s per GiB (a {rec['measured_gib']:g} "
              "GiB file in the "
              "page cache on a local disk; a cold cache on a network filesystem costs more) "
              "times their size at ImageNet-1k:", "",
              "| output | GiB | size from | before: md5 + copy h |", "|---|---|---|---|"]
    lines += [f"| {o['out']} | {o['gib']} | {o['source']} | {o['before_h']} |"
              for o in rec["outs"]]
    lines += [f"| all (and as much disk again) | {rec['before_copy_gib']} | | {rec['before_h']} |",
              "", "Run dirs (weights, samples) were DVC-cached outs before too and are not "
              "counted: the before figure is a lower bound.", ""]
    return lines


def _memory_lines(paper: dict) -> list[str]:
    n = paper["notes"]
    lines = ["## Memory per node at ImageNet-1k", "",
             "Now = this code; before = the code before issue 26 (the label in each file). "
             "Measured on a 2-core CPU VM; what is extrapolated says so.", "",
             "| what | now | before | unit | how | source |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['now']} | {r['before'] if r['before'] is not None else '-'} | "
              f"{r['unit']} | {r['how']} | {r['source']} |" for r in paper["memory"]]
    lines += ["", "The DiT rows are what grows with the data, on top of a rank's start-up, model "
              f"and batch: {n['dit_fixed_mib']['train']} MiB in train and "
              f"{n['dit_fixed_mib']['eval']} MiB in eval at the smallest N for the tiny CPU DiT "
              "measured (scale-dit-memory.json rows); DiT-L's fixed part, on the host or the "
              "GPU, is not measured. Before, train also held the loaded split and the scaled "
              "copy together while scaling (2x the figure: scale-dit-memory.md). Rank 0 in "
              "eval holds more: see the next section.", "",
              "Loader CPU per rank (scale-loader.json, measured per core, feeding "
              f"{n['loader_feed_img_s']:,} img/s = 3x ViT-S/2's demand at {paper['mfu']:.0%} "
              "MFU): " + ", ".join(f"{k} {v} cores" for k, v in
                                   n["loader_cores_per_rank"].items())
              + f" (target <= {n['loader_max_cores']}).", ""]
    return lines


def _unmeasured_lines(paper: dict) -> list[str]:
    """What these figures cannot say without a GPU and a real cluster; each item names the
    file its caveat comes from."""
    n, mfu = paper["notes"], f"{paper['mfu']:.0%}"
    vq = next((c for c in paper["critical_path"] if c.startswith("vq-encode")), "vq-encode")
    return [
        "## What stays unmeasured without a GPU", "",
        f"- GPU throughput: every GPU cell's hours are analytic FLOPs / "
        f"({paper['peak_tflops']:.0f} TFLOP/s x {mfu} MFU); the {mfu} is an assumption, so "
        "the days and GPU-hours above are too. vq-encode's "
        f"{n['vq_encode_gflops_guess']} GFLOPs per image (the VQ-f8 encoder at 256 px) is a "
        f"guess: {vq} on the critical path.",
        f"- NCCL: DiT eval's hand-over to rank 0 (each rank's samples, features and FID sums: "
        f"{n['dit_sent_to_rank0_mib']} MiB from rank 1 at N = {n['dit_eval_n_max']:,}) ran "
        f"on {n['dit_world']} gloo ranks on a CPU only (scale-dit-memory.json); NCCL's path "
        "and its GPU buffers are untested.",
        "- GPU memory: the DiT figures are host RSS of a tiny DiT on a CPU; DiT-L's device "
        "memory is not measured, nor the loader's pinned copy and GPU augmentation "
        "(scale-loader.md).",
        "- Page cache on Lustre/NFS: DiT train reads its latents by pread through the page "
        "cache, one copy per node for every rank (scale-dit-memory.md); measured on a local "
        "disk only. DVC's record cost was measured on a page-cached file on a local disk too.",
        f"- JPEG decode on real ImageNet storage: the prepare rehearsal decodes synthetic "
        f"photo-like JPEGs ({n['prepare_tree']}) from a local disk; its wall assumes decoding "
        "scales with cores and storage delivers the JPEGs in time (scale-prepare.md).",
        f"- Rank 0's scoring at {n['eval_samples']:,} samples: eval was measured up to N = "
        f"{n['dit_eval_n_max']:,} (rank 0 grew {n['dit_rank0_eval_b_per_sample']:,} B per "
        "sample, mostly torch-fidelity's precision/recall distance matrices), which is "
        "quadratic in N and not extrapolated. scale-dit-memory.md's notes: blocks of 10,000 x "
        f"N float32, {n['pr_blocks_gb']} GB at N = {n['eval_samples']:,} (twice during its "
        f"concatenation), plus the gathered Inception features and logits "
        f"({n['features_gb']} GB).",
        "- SLURM at scale: queue waits, job start-up and requeues are not in the estimate; "
        "the local cluster's ratio is one run on a shared 2-core VM.", ""]
