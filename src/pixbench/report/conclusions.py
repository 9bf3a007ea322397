"""The report's "Conclusions" section: what the study claims at its n, each claim with its
test and validity gate (verify/conclusions.py, the one place they are computed), and the fixed
instruments the generation track's claims are conditional on."""

from __future__ import annotations

import json
from pathlib import Path

from pixbench.config import Params, Paths
from pixbench.errors import UserError

INTRO = ("Each claim compares two cells over their seeds: Welch's t-test, two-sided, "
         "Holm-corrected within its family (every pair of one track and model size) at "
         "α = {alpha:g} (params.yaml `verify.alpha`). *Better* is a significant gap; *tie* is a "
         "gap inside seed noise at this n; a cell that did not learn measurably enters no "
         "claim (*invalid*, with the reason): half or more of its seeds have a top-1 not "
         "clearly above chance (1/classes, the Classification table's chance line), or most "
         "of them never left their loss plateau or have a learning curve too short for a "
         "plateau verdict while their top-1 is not far above chance (the per-seed plateau "
         "table's never / too few curve points). "
         "`pixbench verify` checks every significant claim of the committed reference before "
         "it checks numbers.")


def conclusions_section(params: Params, paths: Paths, tasks: dict) -> list[str]:
    from pixbench.verify import collect
    from pixbench.verify.conclusions import conclude
    from pixbench.verify.machine import this_machine

    if params.verify is None:
        return []
    lines = ["## Conclusions", "", INTRO.format(alpha=params.verify.alpha), ""]
    try:
        fresh = collect(params, paths, this_machine(), tasks)
    except UserError as exc:
        return lines + [f"No conclusions: {exc}", ""]
    fams: dict[str, list] = {}
    for c in conclude(fresh["groups"], params.verify.alpha, tasks):
        fams.setdefault(c.family, []).append(c)
    for fam, cs in fams.items():
        lines += [f"**{fam}**", ""] + [f"- {c.statement()}" for c in cs] + [""]
    if not fams:
        lines += ["No two cells of one track to compare.", ""]
    return lines + instruments_lines(params, paths)


def instruments_lines(params: Params, paths: Paths) -> list[str]:
    """Provenance of the pinned tokenizer and FeatNet (instruments/<profile>/PROVENANCE.json)."""
    gen = params.active.gen
    if gen is None:
        return []
    pins = {"tokenizer": gen.vq.pretrained, "FeatNet": gen.featnet.pretrained}
    if not any(p is not None and p.root == "instruments" for p in pins.values()):
        return ["The generation track's tokenizer and FeatNet are trained on this machine: its "
                "claims hold for them only (another machine trains other instruments).", ""]
    prov_file = Path(paths.instruments_dir) / params.profile / "PROVENANCE.json"
    try:
        prov = json.loads(prov_file.read_text()).get("instruments", {})
    except (OSError, ValueError):
        prov = {}
    out = ["The generation track's claims are conditional on two fixed instruments, the same "
           "bytes on every machine (committed, sha256-checked at load):", ""]
    for name, pre in pins.items():
        if pre is None:
            out.append(f"- {name}: trained on this machine (not pinned)")
            continue
        p = prov.get("tokenizer" if name == "tokenizer" else "featnet", {})
        man, m = p.get("manifest", {}), p.get("metrics", {})
        made = f"{man.get('cpu', '?')}, torch {man.get('versions', {}).get('torch', '?')}"
        score = (f"final L1 {m['final_l1']:.4f}" if isinstance(m.get("final_l1"), float) else
                 f"val top-1 {m['val_top1']:.4f}" if isinstance(m.get("val_top1"), float) else "")
        out.append(f"- {name}: `{pre.path}` sha256 `{pre.sha256[:16]}…`, run `{p.get('run_id')}` "
                   f"(git {str(man.get('git_sha', '?'))[:10]}, {made}){', ' + score if score else ''}")
    return out + [""]
