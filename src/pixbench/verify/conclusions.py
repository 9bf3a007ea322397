"""The study's conclusions: each a comparison of two cells with its test and validity gate.

A conclusion compares two groups of seeds on one result number (a ranking of patch sizes is
the set of its pairs): Welch's t-test (eval/stats.welch), two-sided, Holm-corrected within its
family (every pair of one track and model size), at `verify.alpha`. Its verdict is
- "A > B" (better, by the metric's direction) when significant,
- "tie" when not: the gap is inside seed noise at this n,
- "untested" when a side has fewer than 2 seeds, or no spread (the test is undefined),
- "invalid" when a side fails its validity gate (group_gate), reported with the reason, never
  as a conclusion. The gate is the one definition of "this cell learned" for verify, the
  Conclusions and every test or ranking the report prints (report: pixel_vs_best, the MAE
  table, the classification and locality tables' notes via `cell_gate`). A cell fails it when
  - half or more of its seeds have a top-1 not clearly above chance: within CHANCE_SE binomial
    standard errors (at the run's val size) of 100 / num_classes %;
  - most of its seeds have no evidence of learning in their curve: they never left their loss
    plateau (eval/plateau.py, enough curve points), or their learning curve is too short for a
    plateau verdict (2 to MIN_VERDICT_POINTS - 1 windows, no escape seen) while their top-1 is
    not far above chance.
  "Far above chance" (FAR_GAP): top-1 at least half-way from chance to 100 %. Such a run has
  learned whatever its curve says, so it is never "never escaped" (the consistency check of
  run_gate: its plateau verdict reads "learned") and never failed for a short curve.
  A single curve point is no curve (the MAE tasks log one row per epoch): those runs are gated
  on top-1 alone, as before.

`pixbench verify` checks the reference's conclusions before its numbers: every significant
conclusion of the reference must hold in the fresh runs — the same sign of the gap (the fresh
test need not reach significance at its own n) and both sides valid; a reversed sign, a gate
failure or a missing group departs.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass

from pixbench.eval.plateau import MIN_VERDICT_POINTS, interval_losses, plateau
from pixbench.eval.stats import welch

# What a ranking is made of is the task table's (tasks/table.py `ranked_by`: metric, higher is
# better; `baseline`: the task the same patch size is paired against, e.g. pre-trained vs
# scratch), handed to `conclude` as `tasks`. Reconstruction losses of MAE are left out: at each
# patch size the target differs, so they do not rank.
CHANCE_SE = 3.0  # "clearly above chance": more than 3 binomial standard errors over 1/classes
# "far above chance": top-1 covers at least this fraction of the way from chance to 100 %
# (10 classes: 55 %). Set so that a plateau, where a stalled pixel model sits at ~25-30 % on
# 10 classes, is not far, while the 60 % of issue 25's p=7 (read "never" on 3 points) is.
FAR_GAP = 0.5


@dataclass(frozen=True)
class Conclusion:
    family: str          # "classify xxs": the Holm family
    a: str               # group names, as verify's collect names them
    b: str
    metric: str
    higher_better: bool
    verdict: str         # "a" (a better), "b", "tie", "untested", "invalid"
    diff: float | None   # mean(a) - mean(b)
    t: float | None
    df: float | None
    p: float | None      # raw two-sided p
    p_holm: float | None
    n: tuple[int, int]
    why: str             # the reason of "untested" / "invalid"

    @property
    def key(self) -> str:
        return f"{self.a} vs {self.b} {self.metric}"

    @property
    def significant(self) -> bool:
        return self.verdict in ("a", "b")

    def as_dict(self) -> dict:
        return {**asdict(self), "key": self.key}

    def statement(self) -> str:
        """One line: the claim and its test, or why there is none."""
        name = {"a": self.a, "b": self.b}
        if self.verdict in ("a", "b"):
            other = name["b" if self.verdict == "a" else "a"]
            head = f"{name[self.verdict]} better than {other}"
        elif self.verdict == "tie":
            head = f"{self.a} ≈ {self.b} (tie: not significant at n = {self.n[0]}, {self.n[1]})"
        else:
            return f"{self.a} vs {self.b}: {self.verdict} ({self.why})"
        return (f"{head}: {self.metric} Δ {self.diff:+.4g}, t = {self.t:.2f}, df = {self.df:.1f}, "
                f"p = {_p(self.p)}, Holm p = {_p(self.p_holm)}")


def _p(p: float | None) -> str:
    return "–" if p is None or math.isnan(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def group_gate(entry: dict) -> str:
    """'' when the group may enter a conclusion, else why not (the validity gate; see the
    module's docstring for the rules)."""
    gates = [r.get("gate") or {} for r in entry["runs"]]
    n = len(gates)
    chance = [g for g in gates if g.get("above_chance") is False]
    if chance and len(chance) * 2 >= n:
        level = chance[0].get("chance")
        at = f" ({level:.1f} %)" if isinstance(level, (int, float)) else ""
        return f"top-1 not clearly above chance{at} in {len(chance)} of {n} seeds"
    # escaped False: a "never" verdict of a run not far above chance (run_gate)
    stuck = sum(g.get("escaped") is False for g in gates)
    short = [g for g in gates if g.get("plateau") == "short" and not g.get("far_above_chance")]
    if (stuck + len(short)) * 2 > n:
        why = [f"{stuck} of {n} seeds never left their loss plateau"] if stuck else []
        if short:
            pts = ", ".join(str(g.get("curve_points")) for g in short)
            why.append(f"{len(short)} of {n} seeds' learning curves too short for a plateau "
                       f"verdict ({pts} points, fewer than {MIN_VERDICT_POINTS}) with top-1 not "
                       "far above chance")
        return "; ".join(why)
    return ""


def run_gate(metrics: dict, curve: list[dict] | None) -> dict:
    """The gate facts of one run (the report's tables read them too, so they say what the gate
    decides): for a classifier (top1, num_classes, val_n) `chance` %, `above_chance`,
    `far_above_chance`; for a classifier's learning curve of 2+ windows `curve_points` and
    `plateau` ("escaped", "never", "short": eval/plateau.py; "learned": "never" overruled
    because top-1 is far above chance), and `escaped` for an escaped / never verdict (the one
    fact references written before `plateau` carry)."""
    out: dict = {}
    k, n, top1 = metrics.get("num_classes"), metrics.get("val_n"), metrics.get("top1")
    if isinstance(k, int) and isinstance(n, int) and k > 1 and n > 0 and top1 is not None:
        c = 100.0 / k
        out["chance"] = c
        out["above_chance"] = bool(top1 > c + CHANCE_SE * math.sqrt(c * (100.0 - c) / n))
        out["far_above_chance"] = out["above_chance"] and top1 >= c + FAR_GAP * (100.0 - c)
    if curve and isinstance(top1, (int, float)):
        pl = plateau(interval_losses(curve))
        if pl.points >= 2:  # one window is the run's mean loss, not a curve
            verdict = pl.verdict
            if verdict == "never" and out.get("far_above_chance"):
                verdict = "learned"  # it learned: "never escaped" would invert the truth
            out["curve_points"], out["plateau"] = pl.points, verdict
            if verdict in ("escaped", "never"):
                out["escaped"] = verdict == "escaped"
    return out


def cell_gate(runs: list[dict]) -> str:
    """group_gate of report rows (metrics dicts, each with its curve as `_curve` if any): the
    reason a cell of the report enters no test or ranking, '' when it may."""
    return group_gate({"runs": [{"gate": run_gate(r, r.get("_curve"))} for r in runs]})


def _compare(family: str, a: str, b: str, groups: dict, metric: str, hb: bool) -> Conclusion:
    ea, eb = groups[a], groups[b]
    va = [r["values"][metric] for r in ea["runs"]]
    vb = [r["values"][metric] for r in eb["runs"]]
    n = (len(va), len(vb))
    why = "; ".join(f"{g}: {w}" for g, w in ((a, group_gate(ea)), (b, group_gate(eb))) if w)
    if why:
        return Conclusion(family, a, b, metric, hb, "invalid", None, None, None, None, None,
                          n, why)
    res = welch(va, vb)
    if res is None:
        return Conclusion(family, a, b, metric, hb, "untested",
                          statistics.fmean(va) - statistics.fmean(vb), None, None, None, None,
                          n, f"n = {n[0]}, {n[1]}: needs ≥ 2 seeds a side with a spread")
    return Conclusion(family, a, b, metric, hb, "tie", res["diff"], res["t"], res["df"],
                      res["p"], None, n, "")


def _holm(cs: list[Conclusion], alpha: float) -> list[Conclusion]:
    """Holm's step-down correction of the tested conclusions of one family."""
    tested = sorted((c for c in cs if c.p is not None and not math.isnan(c.p)),
                    key=lambda c: c.p)
    m, running, out, rejecting = len(tested), 0.0, {}, True
    for i, c in enumerate(tested):
        running = max(running, min(1.0, (m - i) * c.p))
        rejecting = rejecting and running <= alpha
        better = "a" if (c.diff > 0) == c.higher_better else "b"
        out[c.key] = Conclusion(**{**asdict(c), "p_holm": running,
                                   "verdict": better if rejecting else "tie"})
    return [out.get(c.key, c) for c in cs]


def families(groups: dict, tasks: dict) -> dict[str, list[tuple[str, str, str, bool]]]:
    """{family: [(group a, group b, metric, higher better)]} from the collected groups:
    every pair of patch sizes of a ranked task and size (no variant), and every paired one."""
    ranked = [(n, *t.ranked_by) for n, t in tasks.items() if t.ranked_by]
    fams: dict[str, list] = {}
    by: dict[tuple, dict[int, str]] = {}
    for name, e in groups.items():
        parts = name.split()
        if len(parts) == 3 and parts[2].startswith("p"):
            by.setdefault((e["task"], parts[1]), {})[int(parts[2][1:])] = name
    for task, metric, hb in ranked:
        for (t, size), cells in sorted(by.items()):
            if t == task and len(cells) > 1:
                pairs = itertools.combinations(sorted(cells), 2)
                fams[f"{task} {size}"] = [(cells[p], cells[q], metric, hb) for p, q in pairs]
    for ta, metric, _ in ranked:
        tb = tasks[ta].baseline
        if tb is None:
            continue
        for (t, size), cells in sorted(by.items()):
            other = by.get((tb, size), {})
            if t == ta and other:
                fams[f"{ta} vs {tb} {size}"] = [(cells[p], other[p], metric, True)
                                                for p in sorted(cells) if p in other]
    return fams


def conclude(groups: dict, alpha: float, tasks: dict) -> list[Conclusion]:
    """Every conclusion of the collected groups (verify's collect format), Holm per family;
    `tasks`: the task table (what ranks each task)."""
    out = []
    for fam, pairs in families(groups, tasks).items():
        out += _holm([_compare(fam, a, b, groups, m, hb) for a, b, m, hb in pairs], alpha)
    return out


def check(reference: list[dict], fresh: list[Conclusion]) -> list[dict]:
    """Every significant conclusion of the reference against the fresh one of the same pair:
    {key, reference, fresh, held, why}. Held: both sides valid and the gap has the same sign."""
    by_key = {c.key: c for c in fresh}
    out = []
    for ref in reference:
        if ref["verdict"] not in ("a", "b"):
            continue
        new = by_key.get(ref["key"])
        if new is None:
            held, why = False, "missing: no fresh result for this pair"
        elif new.verdict == "invalid":
            held, why = False, f"invalid here: {new.why}"
        elif new.diff is None or new.diff == 0 or (new.diff > 0) != (ref["diff"] > 0):
            held, why = False, (f"reversed: Δ {ref['diff']:+.4g} in the reference, "
                                f"{(new.diff or 0):+.4g} here")
        else:
            held, why = True, ("significant here too" if new.significant else
                               f"same sign, not significant at n = {new.n[0]}, {new.n[1]}")
        out.append({"key": ref["key"], "reference": ref["verdict"],
                    "fresh": new.verdict if new else None, "held": held, "why": why,
                    "statement": _ref_statement(ref)})
    return out


def _ref_statement(ref: dict) -> str:
    better, worse = (ref["a"], ref["b"]) if ref["verdict"] == "a" else (ref["b"], ref["a"])
    return f"{better} better than {worse} ({ref['metric']})"
