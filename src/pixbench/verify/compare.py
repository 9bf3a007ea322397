"""Judging fresh results against the reference, cell by cell (a cell: one group's metric).

Two modes:
- bitwise: the reference was made on the same machine kind (machine.same_kind) and every fresh
  run of the group has a reference run with the same run id and spec digest. The numbers must
  then be equal to the last bit (runs are seeded and deterministic on one machine).
- statistical: otherwise. Seeds are replicates; with the reference mean m_r over n_r seeds and
  the fresh mean m_f over n_f, the cell reproduces when
      |m_f - m_r| <= tol,  tol = max(k * s * sqrt(1/n_r + 1/n_f), rel_floor * |m_r|),
  where s is the *reference's* spread: the larger of its seeds' sample std and the spread
  measured across machine kinds (the reference's `cross_kind`, written by the machine-kinds
  rehearsal, bench/machine_kinds.py), never the fresh run's own (a fresh run with a wild seed
  must not widen its own band). With no spread measured (one seed, no cross-kind figure):
  tol = single_seed_rel * |m_r|. So too for a task whose seeds share an upstream model trained
  on this machine (the table's `shared_upstream`, unless that model is a pinned instrument): its seed spread
  leaves out that model's own variation, so the group counts as one replicate.
k, rel_floor and single_seed_rel come from params.yaml (`verify`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

# The result numbers of each task (not its speeds or memory) and the upstream model its seeds
# share are the task table's (tasks/table.py `results`, `shared_upstream`); `collect` writes
# them into each group ("values", "shared"), and the judge reads them from there. Sharing one:
# every DiT trains on the latents of one tokenizer (gen_sweep.tokenizer_seed) and dit-eval
# scores with one FeatNet. On another machine the tokenizer changes and moves every seed
# together: from 2 intra-op threads to 1 (2-core AVX-512 VM) its PSNR went 21.0 -> 19.9 and
# each DiT's train loss rose 4-7% (DiT-XXS/1 0.0816 -> 0.0870), while two DiT seeds on one
# tokenizer differed by 0.05%. Where both sides used the same pinned instruments
# (tasks/gen/instruments.py), the rule does not apply.


@dataclass(frozen=True)
class Cell:
    group: str
    metric: str
    mode: str                  # "bitwise", "statistical", "single-seed", "one tokenizer, FeatNet"
                               # (a shared upstream: one replicate) or "no reference"
    reference: list[float]
    fresh: list[float]
    tolerance: float | None    # |Δmean| allowed (0 for bitwise); None without a reference
    ok: bool | None            # None without a reference

    @property
    def delta(self) -> float | None:
        if not self.reference or not self.fresh:
            return None
        return statistics.fmean(self.fresh) - statistics.fmean(self.reference)

    def as_dict(self) -> dict:
        return {**asdict(self), "delta": self.delta}


def tolerance(ref: list[float], fresh: list[float], cfg, shared: str | None = None,
              spread: float | None = None) -> tuple[str, float]:
    """(mode, allowed |Δmean|) of the statistical rule in the module docstring; `shared`: the
    upstream models the seeds share (the group's "shared"), which make it one replicate;
    `spread`: the cross-kind standard deviation measured for this cell, if any."""
    m_r = abs(statistics.fmean(ref))
    if shared:
        return f"one {shared}", cfg.single_seed_rel * m_r
    sds = [x for x in (statistics.stdev(ref) if len(ref) > 1 else None, spread) if x is not None]
    if not sds:
        return "single-seed", cfg.single_seed_rel * m_r
    mode = "statistical" if spread is None else "statistical, cross-kind spread"
    se = max(sds) * math.sqrt(1 / len(ref) + 1 / len(fresh))
    return mode, max(cfg.k * se, cfg.rel_floor * m_r)


def judge_group(group: str, ref: dict | None, fresh: dict, bitwise: bool, cfg,
                pinned: bool = False, spread: dict | None = None,
                sanity: dict | None = None) -> list[Cell]:
    """The cells of one group. `ref`/`fresh`: {"task", "runs": [{run_id, seed, spec_digest,
    values}], "shared"} as verify.collect writes them; `pinned`: both sides used the same
    committed instruments (no shared-upstream rule); `spread`: {metric: {"sd": ...}} across kinds;
    `sanity`: {task.metric: (low, high)}, the bands of retrained instruments."""
    cells = []
    for metric in fresh["runs"][0]["values"]:
        new = [r["values"][metric] for r in fresh["runs"]]
        if ref is None:
            cells.append(Cell(group, metric, "no reference", [], new, None, None))
            continue
        old = [r["values"][metric] for r in ref["runs"]]
        by_id = {r["run_id"]: r for r in ref["runs"]}
        if bitwise and all(r["run_id"] in by_id and
                           by_id[r["run_id"]]["spec_digest"] == r["spec_digest"]
                           for r in fresh["runs"]):
            pairs = [(by_id[r["run_id"]]["values"][metric], r["values"][metric])
                     for r in fresh["runs"]]
            cells.append(Cell(group, metric, "bitwise", [a for a, _ in pairs],
                              [b for _, b in pairs], 0.0, all(a == b for a, b in pairs)))
            continue
        band = (sanity or {}).get(f"{fresh['task']}.{metric}")
        if band is not None and not pinned:  # a retrained instrument: its sanity band
            m = statistics.fmean(new)
            cells.append(Cell(group, metric, f"sanity band [{band[0]:g}, {band[1]:g}]", old,
                              new, None, band[0] <= m <= band[1]))
            continue
        shared = None if pinned else fresh.get("shared")
        sd = ((spread or {}).get(metric) or {}).get("sd")
        mode, tol = tolerance(old, new, cfg, shared, sd)
        ok = abs(statistics.fmean(new) - statistics.fmean(old)) <= tol
        cells.append(Cell(group, metric, mode, old, new, tol, ok))
    return cells


def judge(reference: dict, fresh: dict, cfg, bitwise: bool) -> list[Cell]:
    """Every cell of the fresh results (the current sweep), in their order."""
    inst = fresh.get("instruments") or {}
    pinned = bool(inst) and all(inst.values()) and reference.get("instruments") == inst
    cross = reference.get("cross_kind") or {}
    sanity = (getattr(cfg, "sanity", None) or {}).get(fresh.get("profile"))
    cells = []
    for group, entry in fresh["groups"].items():
        cells += judge_group(group, reference["groups"].get(group), entry, bitwise, cfg,
                             pinned, cross.get(group), sanity)
    return cells


def _values(values: list[float]) -> str:
    if not values:
        return "–"
    m = statistics.fmean(values)
    s = f" ± {statistics.stdev(values):.4g}" if len(values) > 1 else ""
    return f"{m:.6g}{s} (n={len(values)})"


def describe(cell: Cell) -> str:
    """One line naming the cell, the reference, the fresh result and the tolerance."""
    if cell.ok is None:
        return f"NEW      {cell.group} {cell.metric}: fresh {_values(cell.fresh)}, no reference"
    status = "ok      " if cell.ok else "DEPARTS "
    if cell.mode.startswith("sanity band"):
        return f"{status}{cell.group} {cell.metric}: fresh {_values(cell.fresh)}, {cell.mode}"
    if cell.mode == "bitwise":
        diff = [f"{a!r} != {b!r}" for a, b in zip(cell.reference, cell.fresh) if a != b]
        detail = "bitwise equal" if cell.ok else "not bitwise equal: " + "; ".join(diff)
        return f"{status}{cell.group} {cell.metric}: {_values(cell.fresh)}, {detail}"
    return (f"{status}{cell.group} {cell.metric}: reference {_values(cell.reference)}, fresh "
            f"{_values(cell.fresh)}, |Δ| {abs(cell.delta):.4g} "
            f"{'<=' if cell.ok else '>'} tolerance {cell.tolerance:.4g} ({cell.mode})")
